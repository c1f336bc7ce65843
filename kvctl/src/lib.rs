//! kvctl: a client for chordkv.
//!
//! [`Client`] talks to one node over a [`Channel`] and asks it to get, put, delete or look up
//! keys; the node coordinates each request wherever the key lives on the ring.
//!
//! A key may hold several concurrent versions (siblings): writes coordinated by different nodes
//! while they could not see each other, or writes that did not pass back the context of a read.
//! [`Client::read`], [`Client::write`] and [`Client::remove`] expose them: a read returns every
//! live value and a causal context, and a write replaces exactly the versions its context
//! covers. [`Client::get`], [`Client::put`] and [`Client::delete`] are conveniences on top for
//! callers that expect one value: `get` refuses siblings with [`Error::Conflict`], `put` and
//! `delete` read first and replace what they read.
//!
//! [`Client::with_session`] runs a client's requests in a [`Session`]: its reads never go
//! back in time from what the session read and wrote (and inherited from what it read), and its
//! writes are ordered after them, whichever node each request goes through. A request no
//! reachable copy can serve that way fails with [`Error::SessionUnmet`], naming the guarantee;
//! the session itself is a value to save and restore ([`Session::to_bytes`]).
//!
//! [`Client::ring`] walks the ring node by node with `Status` requests and reports what it finds
//! inconsistent, which is how an operator (and the end-to-end tests) see whether the ring has
//! converged.
//!
//! [`Client::connect_direct`] (or [`Client::routed`]) makes a client that keeps a view of the
//! ring and sends each request straight to the key's owner, falling back to the plain path
//! through its node when the view is wrong ([`route`]); [`Client::route_stats`] counts how each
//! request went.
//!
//! Errors are the node crate's [`Error`], re-exported: what a node answers and what goes wrong
//! on the way are one enum.

pub mod bench;
pub mod context_token;
pub mod route;
pub mod session_file;

pub use route::{RouteOptions, RouteStats};

pub use chordkv_node::id::Id;
pub use chordkv_node::message::{LookupInfo, NodeRef, NodeStatus, ReadReply};
pub use chordkv_node::session::{Guarantee, Session};
pub use chordkv_node::version::{Context, Dot, VersionVector};
pub use chordkv_node::walk::{
    MAX_RING_NODES, RingMember, RingView, WalkEnd, inconsistencies, walk_ring,
};
pub use chordkv_node::{Error, Result};

use chordkv_node::message::{Request, Response};
use chordkv_node::wire::{Channel, Dialer, Limits, Role};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A connection to one chordkv node.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    /// How this client connects: to its node, and to the others (ring walks, routing).
    dialer: Arc<Dialer>,
    timeout: Duration,
    /// Copies a read merges (R), if not the node's default.
    r: Option<u8>,
    /// Copies a write waits for (W), if not the node's default.
    w: Option<u8>,
    /// The session every request runs in, if any (shared by the clones of this client).
    session: Option<Arc<Mutex<Session>>>,
    /// Zero-hop routing to each key's owner, if asked for (shared by the clones).
    router: Option<Arc<route::Router>>,
}

impl Client {
    /// Connects to the node at `addr` ("HOST:PORT"); `timeout` bounds the connection and then
    /// every request.
    ///
    /// Every address the host resolves to is tried in turn, so "localhost:7000" works whether
    /// the node listens on IPv4 or IPv6.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `addr` is not HOST:PORT or does not resolve; otherwise the
    /// errors of [`Channel::connect`] for the last address tried.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client> {
        Client::connect_with(addr, Client::open_dialer(), timeout).await
    }

    /// How a client without credentials connects: plain TCP, proving nothing.
    pub fn open_dialer() -> Dialer {
        Dialer::open(Role::Client, Limits::client())
    }

    /// [`Client::connect`] through `dialer`: with a token to prove, over TLS, or as a node. The
    /// client reaches every other node it talks to the same way.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`Error::Unauthorized`] if TLS or the token is refused.
    pub async fn connect_with(addr: &str, dialer: Dialer, timeout: Duration) -> Result<Client> {
        let dialer = Arc::new(dialer);
        let mut last = None;
        for candidate in resolve(addr, timeout).await? {
            match Channel::dial(candidate, &dialer, timeout).await {
                Ok(channel) => {
                    return Ok(Client {
                        channel,
                        dialer,
                        timeout,
                        r: None,
                        w: None,
                        session: None,
                        router: None,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::InvalidInput(format!("bad address {addr:?}: it resolves to no address"))
        }))
    }

    /// [`Client::connect`], then [`Client::routed`] with the default [`RouteOptions`]: every
    /// get, put and delete goes straight to the key's owner.
    ///
    /// # Errors
    /// As [`Client::connect`].
    pub async fn connect_direct(addr: &str, timeout: Duration) -> Result<Client> {
        Ok(Client::connect(addr, timeout)
            .await?
            .routed(RouteOptions::default())
            .await)
    }

    /// This client with zero-hop routing ([`route`]): it walks the ring now and then, and
    /// sends each read, write and delete straight to the key's owner over a pooled connection
    /// per node; when the owner refuses, cannot be reached or does not answer a read, the
    /// request falls back to the plain path through this client's node. Sessions, quorums and
    /// write retries keep exactly their plain-path guarantees (see [`route`] for how). Clones
    /// share the view, the pool and the counts ([`Client::route_stats`]). Must run inside a
    /// tokio runtime: it starts a task that refreshes the view until the last clone is dropped.
    pub async fn routed(mut self, options: RouteOptions) -> Client {
        let router = route::Router::start(
            self.channel.clone(),
            Arc::clone(&self.dialer),
            self.timeout,
            options,
        )
        .await;
        self.router = Some(router);
        self
    }

    /// A plain client of the node at `addr`, connected as this one is (same credentials, TLS
    /// and timeout).
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect_to(&self, addr: &str) -> Result<Client> {
        Client::connect_with(addr, Dialer::clone(&self.dialer), self.timeout).await
    }

    /// How the requests of a routed client went so far; `None` for a plain client.
    pub fn route_stats(&self) -> Option<RouteStats> {
        self.router.as_ref().map(|r| r.stats())
    }

    /// The nodes of a routed client's current view of the ring, in id order; `None` for a
    /// plain client.
    pub fn route_view(&self) -> Option<Vec<NodeRef>> {
        self.router.as_ref().map(|r| r.view().nodes().collect())
    }

    /// Sends a get, put or delete: to the key's owner if routed, else to this client's node.
    async fn call_data(&self, req: Request) -> Result<Response> {
        match &self.router {
            Some(router) => router.call(req).await,
            None => self.call(req).await,
        }
    }

    /// This client with per-request quorums: reads merge `r` copies and writes wait for `w`
    /// copies (each within 1..=N; the node refuses others), instead of the node's defaults.
    pub fn with_quorums(mut self, r: Option<u8>, w: Option<u8>) -> Client {
        self.r = r;
        self.w = w;
        self
    }

    /// This client with every read and write in `session` ([`chordkv_node::session`]): reads
    /// never go back in time from what the session read and wrote, and writes are ordered after
    /// them. A request no reachable copy can serve that way fails with
    /// [`Error::SessionUnmet`]; one that would take the session past a bound fails with
    /// [`Error::SessionFull`] before anything is sent. Clones of this client share the session.
    pub fn with_session(mut self, session: Session) -> Client {
        self.session = Some(Arc::new(Mutex::new(session)));
        self
    }

    /// This client in the same session as `other` (a client of another node, say).
    pub fn sharing_session(mut self, other: &Client) -> Client {
        self.session = other.session.clone();
        self
    }

    /// A copy of the session as it is now, to save; `None` without a session.
    pub fn session(&self) -> Option<Session> {
        self.session.as_ref().map(|s| lock(s).clone())
    }

    /// The address of the node this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.channel.peer()
    }

    /// Sends one request and returns the node's answer.
    ///
    /// # Errors
    /// As [`Channel::call`].
    pub async fn call(&self, req: Request) -> Result<Response> {
        self.channel.call(req, self.timeout).await
    }

    /// Every live version of `key` and the causal context to write back: [`ReadReply::values`]
    /// holds one value per concurrent version (sibling), none if the key is absent or deleted.
    ///
    /// # Errors
    /// As [`Client::call`]; [`Error::InvalidData`] if the node answers something else.
    pub async fn read(&self, key: &[u8]) -> Result<ReadReply> {
        self.read_with(key, self.r).await
    }

    async fn read_with(&self, key: &[u8], r: Option<u8>) -> Result<ReadReply> {
        let floor = match &self.session {
            Some(s) => {
                let s = lock(s);
                s.admit(key)?;
                Some(Box::new(s.floor(key)))
            }
            None => None,
        };
        let req = Request::Get {
            key: key.to_vec(),
            r,
            session: floor,
        };
        match self.call_data(req).await? {
            Response::Read(reply) => {
                if let Some(s) = &self.session {
                    lock(s).observe_read(key, &reply.context, &reply.deps, reply.stable);
                }
                Ok(reply)
            }
            other => Err(unexpected("get", &other)),
        }
    }

    /// Sends a write (`value: None` deletes) in the session, if any, and records its dot.
    async fn send_write(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        context: &VersionVector,
    ) -> Result<Written> {
        let (context, session) = match &self.session {
            Some(s) => {
                self.compact_if_needed(s).await;
                let s = lock(s);
                s.admit(key)?;
                let part = s.for_write(key)?;
                (s.write_context(key, context), Some(Box::new(part)))
            }
            None => (context.clone(), None),
        };
        let op = if value.is_some() { "put" } else { "delete" };
        let mut req = Request::write(key.to_vec(), value.map(<[u8]>::to_vec), context, self.w);
        if let Request::Put { session: s, .. } | Request::Delete { session: s, .. } = &mut req {
            *s = session;
        }
        match self.call_data(req).await? {
            Response::Written {
                dot,
                existed,
                stable,
            } => {
                if let Some(s) = &self.session {
                    lock(s).observe_write(key, dot, stable);
                }
                Ok(Written {
                    dot,
                    existed,
                    stable,
                })
            }
            other => Err(unexpected(op, &other)),
        }
    }

    /// If the session holds more unstable keys than a write may carry as dependencies, read
    /// the oldest of them from all N copies (`R = N`) to learn which every copy holds. A probe
    /// that fails leaves its key unstable; [`Session::for_write`] then refuses the write.
    async fn compact_if_needed(&self, session: &Arc<Mutex<Session>>) {
        let candidates = {
            let s = lock(session);
            if !s.needs_compaction() {
                return;
            }
            s.compaction_candidates()
        };
        let Ok(status) = self.status().await else {
            return;
        };
        let all = u8::try_from(status.replicas_wanted).ok();
        for key in candidates {
            let _ = self.read_with(&key, all).await;
        }
    }

    /// Writes a new version of `key` holding `value`. It replaces the versions `context` covers
    /// (pass the context of a [`Client::read`] to replace what it returned); versions it does not
    /// cover, written concurrently, stay as siblings. An empty context replaces nothing: a blind
    /// write adds a sibling to whatever is there.
    ///
    /// # Errors
    /// As [`Client::read`].
    pub async fn write(
        &self,
        key: &[u8],
        value: &[u8],
        context: &VersionVector,
    ) -> Result<Written> {
        self.send_write(key, Some(value), context).await
    }

    /// Deletes the versions of `key` that `context` covers, by writing a tombstone version that
    /// replaces them; versions it does not cover stay. The tombstone is written even if there is
    /// nothing to delete, and [`Written::existed`] says whether the key had a live value.
    ///
    /// # Errors
    /// As [`Client::read`].
    pub async fn remove(&self, key: &[u8], context: &VersionVector) -> Result<Written> {
        self.send_write(key, None, context).await
    }

    /// The value stored under `key`: `None` if there is no live value, the value if there is
    /// exactly one. For a key that may have siblings, use [`Client::read`].
    ///
    /// # Errors
    /// [`Error::Conflict`] if the key has several concurrent values (siblings); otherwise as
    /// [`Client::read`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        single_value(self.read(key).await?)
    }

    /// Stores `value` under `key`, replacing what is there: reads the key, then writes with the
    /// read's context. Only the versions that read returned are replaced: a version another
    /// client writes between the read and the write is concurrent with this one, and both stay
    /// as siblings (see [`Client::read`] to resolve them). Returns the new version's dot.
    ///
    /// # Errors
    /// As [`Client::read`] and [`Client::write`].
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Dot> {
        let read = self.read(key).await?;
        Ok(self.write(key, value, &read.context).await?.dot)
    }

    /// Deletes `key`: reads it, then removes the versions that read returned (with its
    /// context). Returns whether there was a live value to delete; if there was none, nothing is
    /// written. As with [`Client::put`], a version another client writes between the read and
    /// the delete survives as a sibling of the tombstone, and the key is not deleted.
    ///
    /// # Errors
    /// As [`Client::read`] and [`Client::remove`].
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        let read = self.read(key).await?;
        if read.values.is_empty() {
            return Ok(false);
        }
        self.remove(key, &read.context).await?;
        Ok(true)
    }

    /// Which node owns `key`, and how many hops it took to find out.
    ///
    /// # Errors
    /// As [`Client::read`].
    pub async fn lookup(&self, key: &[u8]) -> Result<LookupInfo> {
        match self.call(Request::Lookup { key: key.to_vec() }).await? {
            Response::Lookup(info) => Ok(info),
            other => Err(unexpected("lookup", &other)),
        }
    }

    /// The node's view of itself and its neighbours.
    ///
    /// # Errors
    /// As [`Client::read`].
    pub async fn status(&self) -> Result<NodeStatus> {
        match self.call(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Walks the ring from the node at `start_addr`: its status, then its successor's, and so on
    /// until the walk returns to the start. A node that cannot be reached is recorded and the
    /// walk goes on with the next entry of the previous node's successor list. At most
    /// [`MAX_RING_NODES`] nodes are visited. `timeout` bounds each connection and request.
    ///
    /// # Errors
    /// Only if the start node cannot be asked; any later failure is part of the [`RingView`].
    pub async fn ring(start_addr: &str, timeout: Duration) -> Result<RingView> {
        Client::connect(start_addr, timeout)
            .await?
            .ring_view()
            .await
    }

    /// [`Client::ring`] starting from this client's node, connecting to the others in turn.
    ///
    /// # Errors
    /// Only if this client's node cannot be asked.
    pub async fn ring_view(&self) -> Result<RingView> {
        let start = self.status().await?;
        let view = walk_ring(start, |node: NodeRef| async move {
            self.connect_to(&node.addr.to_string())
                .await?
                .status()
                .await
        })
        .await;
        Ok(view)
    }
}

/// Resolves "HOST:PORT" to socket addresses, within `timeout`.
async fn resolve(addr: &str, timeout: Duration) -> Result<Vec<SocketAddr>> {
    let bad = || Error::InvalidInput(format!("bad address {addr:?}: expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host(addr)).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(Error::InvalidInput(format!(
            "bad address {addr:?}: cannot resolve {host}: {e}"
        ))),
        Err(_) => Err(Error::Timeout(format!(
            "resolving {host} took longer than {timeout:?}"
        ))),
    }
}

/// What a write ([`Client::write`], [`Client::remove`]) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The dot the key's owner gave the new version (a tombstone, for a remove).
    pub dot: Dot,
    /// Whether the key had a live value before the write.
    pub existed: bool,
    /// Every one of the key's N copies had stored it when the node answered.
    pub stable: bool,
}

/// The session behind a lock; a panic elsewhere cannot have left it half-updated (every update
/// is one call), so a poisoned lock is taken as is.
fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// The one live value of a read: `None` if it has none.
///
/// # Errors
/// [`Error::Conflict`] if it has several concurrent values (siblings).
pub fn single_value(read: ReadReply) -> Result<Option<Vec<u8>>> {
    let n = read.values.len();
    if n > 1 {
        return Err(Error::Conflict(format!(
            "key has {n} concurrent values (siblings): read them all with `read` and write back \
             with its context"
        )));
    }
    Ok(read.values.into_iter().next())
}

/// The error for an answer that does not fit the request.
fn unexpected(op: &str, response: &Response) -> Error {
    // Name the variant only: a Read may be megabytes long.
    let kind = response.kind();
    Error::InvalidData(format!("the node answered {op} with {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A node with id `n` (in the top byte, so it shows in short ids) on port 7000 + n.
    pub(crate) fn node(n: u8) -> NodeRef {
        let mut id = [0u8; 20];
        id[0] = n;
        NodeRef {
            id: Id(id),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n))),
        }
    }

    /// The status of node `n` with predecessor `pred` and successor list `succs`.
    fn status(n: u8, pred: Option<u8>, succs: &[u8]) -> NodeStatus {
        NodeStatus {
            node: node(n),
            joined: true,
            pred: pred.map(node),
            succs: succs.iter().copied().map(node).collect(),
            fingers: vec![],
            keys: u64::from(n),
            successors_wanted: 2,
            owned: 0,
            replicas: 1,
            replicas_wanted: 1,
        }
    }

    /// A healthy ring of the given ids (ascending), each with two successors.
    fn healthy(ids: &[u8]) -> Vec<NodeStatus> {
        let n = ids.len();
        (0..n)
            .map(|i| {
                status(
                    ids[i],
                    Some(ids[(i + n - 1) % n]),
                    &[ids[(i + 1) % n], ids[(i + 2) % n]],
                )
            })
            .collect()
    }

    /// Walks from the first status over the given ones; nodes not listed are unreachable.
    async fn walk(statuses: Vec<NodeStatus>) -> RingView {
        let start = statuses[0].clone();
        let by_addr: HashMap<SocketAddr, NodeStatus> =
            statuses.into_iter().map(|s| (s.node.addr, s)).collect();
        walk_ring(start, |n: NodeRef| {
            let answer = by_addr
                .get(&n.addr)
                .cloned()
                .ok_or_else(|| Error::Unreachable(format!("node {}", n.addr)));
            std::future::ready(answer)
        })
        .await
    }

    fn order(view: &RingView) -> Vec<u8> {
        view.nodes.iter().map(|m| m.node().id.0[0]).collect()
    }

    /// Checks the view reports exactly one inconsistency per needle, each containing it.
    fn assert_found(view: &RingView, needles: &[&str]) {
        let found = &view.inconsistencies;
        assert_eq!(found.len(), needles.len(), "{found:#?}");
        for needle in needles {
            assert!(
                found.iter().any(|i| i.contains(needle)),
                "no inconsistency mentions {needle:?}: {found:#?}"
            );
        }
    }

    #[tokio::test]
    async fn a_consistent_ring_reports_nothing() {
        // Negative control: the checks below must not fire on a healthy ring, from any start.
        let ring = healthy(&[10, 50, 90, 200]);
        for start in 0..ring.len() {
            let mut rotated = ring.clone();
            rotated.rotate_left(start);
            let view = walk(rotated).await;
            assert_eq!(view.end, WalkEnd::Closed);
            assert!(view.is_consistent(), "{:#?}", view.inconsistencies);
            assert_eq!(view.nodes.len(), 4);
        }
        let order_from_90 = {
            let mut r = ring.clone();
            r.rotate_left(2);
            order(&walk(r).await)
        };
        assert_eq!(order_from_90, vec![90, 200, 10, 50]);
    }

    #[tokio::test]
    async fn a_ring_of_one_is_consistent() {
        let view = walk(vec![status(7, None, &[])]).await;
        assert_eq!(view.end, WalkEnd::Closed);
        assert!(view.is_consistent(), "{:#?}", view.inconsistencies);
    }

    #[tokio::test]
    async fn a_wrong_predecessor_is_reported() {
        let mut ring = healthy(&[10, 50, 90]);
        ring[1].pred = Some(node(90)); // 10's successor is 50, but 50 thinks 90 precedes it
        let view = walk(ring).await;
        assert_eq!(view.end, WalkEnd::Closed);
        assert_found(
            &view,
            &[
                "node 0a000000@127.0.0.1:7010's successor is 32000000@127.0.0.1:7050 \
               but 32000000@127.0.0.1:7050's predecessor is 5a000000@127.0.0.1:7090",
            ],
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_is_skipped_and_reported() {
        let mut ring = healthy(&[10, 50, 90, 200]);
        ring.remove(1); // 50 is down; 10 still names it first
        ring[1].pred = Some(node(10)); // and 90 already adopted 10
        let view = walk(ring).await;
        assert_eq!(view.end, WalkEnd::Closed);
        assert_eq!(order(&view), vec![10, 50, 90, 200]);
        assert!(matches!(view.nodes[1], RingMember::Unreachable { .. }));
        assert_found(&view, &["node 32000000@127.0.0.1:7050 is unreachable"]);
    }

    #[tokio::test]
    async fn ids_out_of_order_are_reported() {
        // Successor pointers skip 50 and come back to it: 10 -> 90 -> 50 -> 200 -> 10.
        let ring = vec![
            status(10, Some(200), &[90]),
            status(90, Some(10), &[50]),
            status(50, Some(90), &[200]),
            status(200, Some(50), &[10]),
        ];
        let view = walk(ring).await;
        assert_eq!(view.end, WalkEnd::Closed);
        assert_found(
            &view,
            &["ring order not increasing by id: the walk passes zero 2 times, expected 1"],
        );
    }

    #[tokio::test]
    async fn a_walk_that_does_not_close_is_reported() {
        // 90 has no successor at all.
        let ring = vec![
            status(10, Some(90), &[50]),
            status(50, Some(10), &[90]),
            status(90, Some(50), &[]),
        ];
        let view = walk(ring).await;
        assert_eq!(view.end, WalkEnd::NoSuccessor(node(90)));
        assert_found(
            &view,
            &["walk did not close: node 5a000000@127.0.0.1:7090 has no reachable successor"],
        );

        // 90 points back to 50, never to the start: a loop that misses 10.
        let ring = vec![
            status(10, Some(90), &[50]),
            status(50, Some(90), &[90]),
            status(90, Some(50), &[50]),
        ];
        let view = walk(ring).await;
        assert_eq!(
            view.end,
            WalkEnd::Revisited {
                from: node(90),
                to: node(50)
            }
        );
        assert_found(
            &view,
            &[
                "walk did not close: node 5a000000@127.0.0.1:7090's successor 32000000",
                // 50 took 90 as its predecessor, so 10 -> 50 is one-sided.
                "node 0a000000@127.0.0.1:7010's successor is 32000000",
            ],
        );
    }

    #[tokio::test]
    async fn a_node_answering_under_another_id_is_reported() {
        let mut ring = healthy(&[10, 50, 90]);
        // The process at 50's address now has id 60; 90 still thinks 50 precedes it.
        ring[1].node.id = node(60).id;
        let view = walk(ring).await;
        assert_found(
            &view,
            &[
                "node 32000000@127.0.0.1:7050 answered as 3c000000@127.0.0.1:7050",
                // 90 still names the old id as its predecessor.
                "node 3c000000@127.0.0.1:7050's successor is 5a000000",
            ],
        );
    }

    #[test]
    fn inconsistencies_of_hand_built_lists() {
        // The pure check on its own, without a walk.
        let ring: Vec<RingMember> = healthy(&[1, 2, 3])
            .into_iter()
            .map(RingMember::Up)
            .collect();
        assert!(inconsistencies(&ring, &WalkEnd::Closed).is_empty());
        let found = inconsistencies(&ring, &WalkEnd::TooLong);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("stopped after"), "{found:?}");
    }

    fn reply(values: &[&[u8]]) -> ReadReply {
        ReadReply {
            values: values.iter().map(|v| v.to_vec()).collect(),
            context: VersionVector::new(),
            deps: Default::default(),
            stable: false,
        }
    }

    #[test]
    fn single_value_is_none_one_or_a_conflict() {
        assert_eq!(single_value(reply(&[])), Ok(None));
        assert_eq!(single_value(reply(&[b"a"])), Ok(Some(b"a".to_vec())));
        // An empty value is a value, not an absence.
        assert_eq!(single_value(reply(&[b""])), Ok(Some(Vec::new())));
        match single_value(reply(&[b"a", b"b", b"c"])) {
            Err(Error::Conflict(msg)) => {
                assert!(
                    msg.starts_with("key has 3 concurrent values (siblings)"),
                    "{msg}"
                );
                assert!(msg.contains("`read`"), "{msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unexpected_answers_name_the_variant_not_its_contents() {
        let big = reply(&[&[b'x'; 1000]]);
        let err = unexpected("put", &Response::Read(big));
        assert_eq!(
            err,
            Error::InvalidData("the node answered put with Read".into())
        );
        let written = Response::Written {
            dot: Dot::new(node(1).id, 1),
            existed: false,
            stable: false,
        };
        assert_eq!(
            unexpected("get", &written),
            Error::InvalidData("the node answered get with Written".into())
        );
    }

    #[tokio::test]
    async fn bad_addresses_are_invalid_input() {
        for addr in ["nocolon", ":7000", "host:", "host:notaport", "host:70000"] {
            let got = Client::connect(addr, Duration::from_secs(1)).await;
            match got {
                Err(Error::InvalidInput(msg)) => {
                    assert!(msg.contains("expected HOST:PORT"), "{addr}: {msg}");
                }
                other => panic!("{addr}: unexpected {other:?}"),
            }
        }
    }
}
