//! Zero-hop routing: a client that sends each request straight to the key's owner.
//!
//! VIEW
//!
//! The router walks the ring with `Status` requests ([`walk_ring`]), as `kvctl ring` does, and
//! keeps the nodes that answered and have finished joining, sorted by id. Chord's rule names the
//! owner: the first node clockwise at or after the key's id, so a key `k` belongs to the node
//! `n` with `k ∈ (pred(n), n]` ([`chordkv_node::id::in_half_open`]). A node that did not answer
//! the walk is left out, which is what the ring does once it notices: its successor takes its
//! range. The view is refreshed on a timer ([`RouteOptions::refresh_every`]) and whenever a
//! request finds it wrong, at most once per [`RouteOptions::min_refresh_gap`]. One connection
//! per node is kept in a pool and shared by every request and clone of the client.
//!
//! WHAT IS SENT
//!
//! A read goes to the owner as [`Request::StoreGet`], the owner form a forwarding node sends:
//! a node that does not own the key refuses it with [`Error::WrongOwner`], so an answer proves
//! the owner served it, with no hop. The forwarder puts exactly the client's key, `r` and
//! session floor in it; what the forwarder checks or does besides, the router does too: a
//! quorum outside `1..=N` and a floor over its bounds are sent the plain way, so they are
//! refused exactly as before; and every retryable failure of the direct attempt
//! ([`Error::is_retryable`]: the wrong owner, a lost connection, a timeout, `Unavailable`, and
//! [`Error::SessionUnmet`], which the forwarder retries with backoff until its deadline) falls
//! back to the plain request through a node, which then retries as it always does. A read
//! applies nothing, so sending it twice is harmless.
//!
//! A write is NOT sent in the owner form. [`Request::StoreWrite`] carries a write id
//! ([`chordkv_node::message::WriteId`]) that only a node can mint: each key's state remembers the last
//! four applied ids *per coordinator*, so ids minted by clients would either grow every key's
//! state by one entry per client that ever wrote it (each with its own coordinator id) or,
//! sharing one coordinator id, need incarnations ordered across all clients, without which
//! an owner refuses a first attempt as possibly forgotten ([`Error::Ambiguous`]). So a write
//! goes to the owner as the plain [`Request::Put`] or [`Request::Delete`]: the owner is then
//! also the coordinator, finds itself the owner from its own state (no hop), mints the write
//! id, and retries with it, backs off on `SessionUnmet` and keeps its deadline exactly as any
//! coordinator does, because it is the same code. The answer's dot says who made the version:
//! the node we sent to ([`RouteStats::direct`]) or another owner it forwarded to because the
//! view was stale ([`RouteStats::forwarded`], which triggers a refresh).
//!
//! A write falls back to the plain path only when nothing was sent: the owner could not be
//! connected to, or it refused the request before coordinating it (still joining, leaving).
//! Once sent, its outcome is the owner's: a connection lost or a timeout after sending is
//! returned as it is (as the plain path returns it when its node dies), because resending it
//! through another node would mint a second write id and could apply the write twice.
//!
//! SESSIONS
//!
//! The session part of every request is built by [`crate::Client`] before routing and its
//! answer recorded after, unchanged: routing only chooses the node, and the owner checks the
//! floor whichever way the request came. So `Client::with_session` gives the same guarantees
//! routed or not.

use crate::{Error, Id, NodeRef, NodeStatus, Result, RingMember, walk_ring};
use chordkv_node::message::{Request, Response};
use chordkv_node::wire::{Channel, Dialer};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Tunables of a routed client ([`crate::Client::routed`]).
#[derive(Clone, Debug)]
pub struct RouteOptions {
    /// How often the view is refreshed even if nothing went wrong.
    pub refresh_every: Duration,
    /// At most one refresh per this interval, however many requests find the view wrong.
    pub min_refresh_gap: Duration,
    /// How long a direct read waits for the owner before falling back (the client's timeout
    /// bounds it too). An owner answers a session read within about two RPC timeouts (it may
    /// wait one for a replica), 2 s by default.
    pub read_attempt_timeout: Duration,
    /// After failing to connect to a node, send its requests the plain way for this long
    /// instead of trying again each time.
    pub down_for: Duration,
}

impl Default for RouteOptions {
    fn default() -> RouteOptions {
        RouteOptions {
            refresh_every: Duration::from_secs(5),
            min_refresh_gap: Duration::from_millis(200),
            read_attempt_timeout: Duration::from_secs(3),
            down_for: Duration::from_millis(500),
        }
    }
}

/// What a routed client did with its requests (`get`, `put`, `delete` and their primitives).
/// Every request counts once: served directly, forwarded, fell back (and why) or failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteStats {
    /// Sent to the owner in the view and served by it with no hop: a read answered in the
    /// owner form, or a write whose version carries the dot of the node it was sent to.
    pub direct: u64,
    /// A write sent to the node the view named, which was no longer the owner and forwarded
    /// it (the view was stale; served, with one hop).
    pub forwarded: u64,
    /// Fell back to the plain path: the node the view named refused a read as not its owner.
    pub fallback_wrong_owner: u64,
    /// Fell back: the owner could not be connected to, or the connection was lost (reads).
    pub fallback_unreachable: u64,
    /// Fell back: a read's owner did not answer in time.
    pub fallback_timeout: u64,
    /// Fell back: the owner refused with a retryable error the forwarder would have retried
    /// (`Unavailable`, `Overloaded`, `SessionUnmet`), or refused a write before coordinating
    /// it.
    pub fallback_refused: u64,
    /// Sent the plain way from the start: no view yet, or a request the owner form does not
    /// check (a quorum outside 1..=N, a session floor over its bounds).
    pub fallback_no_route: u64,
    /// A write sent to its owner whose connection was lost or timed out before the answer:
    /// returned as the error (its outcome is unknown), never resent.
    pub write_in_doubt: u64,
    /// Views taken (ring walks that found at least one node).
    pub refreshes: u64,
    /// Nodes in the current view.
    pub view_nodes: u64,
}

impl RouteStats {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.direct + self.forwarded + self.fallbacks() + self.write_in_doubt
    }

    /// Every request that fell back to the plain path, whatever the reason.
    pub fn fallbacks(&self) -> u64 {
        self.fallback_wrong_owner
            + self.fallback_unreachable
            + self.fallback_timeout
            + self.fallback_refused
            + self.fallback_no_route
    }

    /// What was counted after `before`, a snapshot of the same client's counts (the view
    /// size is this snapshot's).
    pub fn since(&self, before: &RouteStats) -> RouteStats {
        RouteStats {
            direct: self.direct - before.direct,
            forwarded: self.forwarded - before.forwarded,
            fallback_wrong_owner: self.fallback_wrong_owner - before.fallback_wrong_owner,
            fallback_unreachable: self.fallback_unreachable - before.fallback_unreachable,
            fallback_timeout: self.fallback_timeout - before.fallback_timeout,
            fallback_refused: self.fallback_refused - before.fallback_refused,
            fallback_no_route: self.fallback_no_route - before.fallback_no_route,
            write_in_doubt: self.write_in_doubt - before.write_in_doubt,
            refreshes: self.refreshes - before.refreshes,
            view_nodes: self.view_nodes,
        }
    }

    /// The share of requests served directly, 0 to 1 (1 when there were none).
    pub fn direct_share(&self) -> f64 {
        match self.total() {
            0 => 1.0,
            n => self.direct as f64 / n as f64,
        }
    }
}

/// The sorted view of the ring: node ids to nodes, and the copies per key (N).
#[derive(Clone, Debug, Default)]
pub struct View {
    nodes: BTreeMap<Id, NodeRef>,
    replicas: Option<usize>,
}

impl View {
    /// The view of the nodes of a ring walk that answered and finished joining.
    pub fn from_members(members: &[RingMember]) -> View {
        let up: Vec<&NodeStatus> = members
            .iter()
            .filter_map(RingMember::status)
            .filter(|s| s.joined)
            .collect();
        View {
            nodes: up.iter().map(|s| (s.node.id, s.node)).collect(),
            replicas: up
                .iter()
                .map(|s| s.replicas_wanted as usize)
                .max()
                .filter(|&n| n > 0),
        }
    }

    /// The owner of `key_id` by Chord's rule: the first node clockwise at or after it.
    pub fn owner(&self, key_id: Id) -> Option<NodeRef> {
        self.nodes
            .range(key_id..)
            .next()
            .or_else(|| self.nodes.iter().next())
            .map(|(_, n)| *n)
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeRef> + '_ {
        self.nodes.values().copied()
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// One pooled connection, or when connecting last failed.
#[derive(Default)]
struct Slot {
    channel: Option<Channel>,
    down_until: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    direct: AtomicU64,
    forwarded: AtomicU64,
    wrong_owner: AtomicU64,
    unreachable: AtomicU64,
    timeout: AtomicU64,
    refused: AtomicU64,
    no_route: AtomicU64,
    in_doubt: AtomicU64,
    refreshes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The routing state a routed [`crate::Client`] and its clones share.
pub(crate) struct Router {
    /// The node the client was connected to: the plain path, and where walks start.
    home: Channel,
    /// How connections to the other nodes are made.
    dialer: Arc<Dialer>,
    timeout: Duration,
    opts: RouteOptions,
    view: Mutex<View>,
    pool: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Slot>>>>,
    /// A refresh is running or scheduled.
    refreshing: AtomicBool,
    last_refresh: Mutex<Option<Instant>>,
    counters: Counters,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("home", &self.home.peer())
            .field("view", &*lock(&self.view))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is one assignment: a poisoned lock holds sound state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a node refused a client write before coordinating it, so nothing was applied and
/// the plain path may carry it instead. These are the refusals `kv::Kv::handle_request` makes
/// before it mints a write id; any other answer (or a changed wording) is returned as it is,
/// which is the safe side.
fn refused_before_coordinating(e: &Error) -> bool {
    match e {
        Error::Unavailable(m) => {
            m == "node is still joining the ring" || m == "node is leaving the ring"
        }
        Error::Overloaded(_) => true,
        _ => false,
    }
}

impl Router {
    /// A router over the client connected through `home`; takes a first view before
    /// returning (requests go the plain way until one is taken) and starts the refresh timer.
    pub(crate) async fn start(
        home: Channel,
        dialer: Arc<Dialer>,
        timeout: Duration,
        opts: RouteOptions,
    ) -> Arc<Router> {
        let router = Arc::new(Router {
            home,
            dialer,
            timeout,
            opts,
            view: Mutex::default(),
            pool: Mutex::default(),
            refreshing: AtomicBool::new(false),
            last_refresh: Mutex::new(None),
            counters: Counters::default(),
        });
        router.refresh().await;
        let weak = Arc::downgrade(&router);
        let every = router.opts.refresh_every;
        tokio::spawn(refresh_timer(weak, every));
        router
    }

    /// What the router counted so far.
    pub(crate) fn stats(&self) -> RouteStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouteStats {
            direct: get(&c.direct),
            forwarded: get(&c.forwarded),
            fallback_wrong_owner: get(&c.wrong_owner),
            fallback_unreachable: get(&c.unreachable),
            fallback_timeout: get(&c.timeout),
            fallback_refused: get(&c.refused),
            fallback_no_route: get(&c.no_route),
            write_in_doubt: get(&c.in_doubt),
            refreshes: get(&c.refreshes),
            view_nodes: lock(&self.view).len() as u64,
        }
    }

    /// A copy of the current view.
    pub(crate) fn view(&self) -> View {
        lock(&self.view).clone()
    }

    /// Sends a client `Get`, `Put` or `Delete` to the key's owner (see the module doc); any
    /// other request goes to the home node.
    pub(crate) async fn call(self: &Arc<Self>, req: Request) -> Result<Response> {
        let key = match &req {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key, .. } => {
                key
            }
            _ => return self.plain(req).await,
        };
        let (owner, replicas) = {
            let view = lock(&self.view);
            (view.owner(Id::hash(key)), view.replicas)
        };
        let Some(owner) = owner else {
            bump(&self.counters.no_route);
            self.refresh_soon();
            return self.plain(req).await;
        };
        if let Request::Get { key, r, session } = req {
            // What a node checks of a plain Get and not of a StoreGet: send those the plain
            // way, to be refused the same way.
            let quorum_ok =
                r.is_none_or(|q| q > 0 && replicas.is_some_and(|n| usize::from(q) <= n));
            let floor_ok = session.as_ref().is_none_or(|f| f.validate().is_ok());
            if !(quorum_ok && floor_ok) {
                bump(&self.counters.no_route);
                return self.plain(Request::Get { key, r, session }).await;
            }
            return self.read(owner, key, r, session).await;
        }
        self.write(owner, req).await
    }

    async fn read(
        self: &Arc<Self>,
        owner: NodeRef,
        key: Vec<u8>,
        r: Option<u8>,
        session: Option<Box<chordkv_node::session::Floor>>,
    ) -> Result<Response> {
        let plain = Request::Get {
            key: key.clone(),
            r,
            session: session.clone(),
        };
        let store = Request::StoreGet { key, r, session };
        let attempt = self.opts.read_attempt_timeout.min(self.timeout);
        let result = match self.channel(owner.addr).await {
            Ok(channel) => channel.call(store, attempt).await,
            Err(e) => Err(e),
        };
        let counter = match &result {
            Ok(_) => {
                bump(&self.counters.direct);
                return result;
            }
            Err(Error::WrongOwner) => &self.counters.wrong_owner,
            Err(Error::Unreachable(_)) => &self.counters.unreachable,
            Err(Error::Timeout(_)) => &self.counters.timeout,
            Err(e) if e.is_retryable() => &self.counters.refused,
            // What the forwarder hands back without retrying (a bad request, a too large
            // state, a corrupt copy): the plain path would answer the same.
            Err(_) => return result,
        };
        bump(counter);
        if !matches!(result, Err(Error::SessionUnmet { .. })) {
            self.refresh_soon();
        }
        self.plain(plain).await
    }

    async fn write(self: &Arc<Self>, owner: NodeRef, req: Request) -> Result<Response> {
        let channel = match self.channel(owner.addr).await {
            Ok(channel) => channel,
            Err(_) => {
                // Nothing was sent.
                bump(&self.counters.unreachable);
                self.refresh_soon();
                return self.plain(req).await;
            }
        };
        // Kept only in case the owner refuses before coordinating; a write is small next to
        // a round trip.
        let copy = req.clone();
        match channel.call(req, self.timeout).await {
            Ok(Response::Written {
                dot,
                existed,
                stable,
            }) => {
                if dot.actor == owner.id {
                    bump(&self.counters.direct);
                } else {
                    bump(&self.counters.forwarded);
                    self.refresh_soon();
                }
                Ok(Response::Written {
                    dot,
                    existed,
                    stable,
                })
            }
            Err(e) if refused_before_coordinating(&e) => {
                bump(&self.counters.refused);
                self.refresh_soon();
                self.plain(copy).await
            }
            Err(e @ (Error::Timeout(_) | Error::Unreachable(_))) => {
                bump(&self.counters.in_doubt);
                self.refresh_soon();
                Err(e)
            }
            other => {
                // The owner's own answer, as the plain path would give it.
                bump(&self.counters.direct);
                other
            }
        }
    }

    /// The plain path: the home node, or if its connection is gone, another node of the view
    /// (the first that can be connected to), which coordinates the request as any node does.
    async fn plain(&self, req: Request) -> Result<Response> {
        if self.home.is_closed() {
            let others: Vec<NodeRef> = lock(&self.view).nodes().collect();
            for node in others {
                if node.addr == self.home.peer() {
                    continue;
                }
                if let Ok(channel) = self.channel(node.addr).await {
                    return channel.call(req, self.timeout).await;
                }
            }
        }
        self.home.call(req, self.timeout).await
    }

    /// The pooled connection to `addr`, connecting if there is none or it closed.
    ///
    /// # Errors
    /// [`Error::Unreachable`] at once for a node that failed to connect within the last
    /// [`RouteOptions::down_for`]; otherwise as [`Channel::connect`].
    async fn channel(&self, addr: SocketAddr) -> Result<Channel> {
        if addr == self.home.peer() && !self.home.is_closed() {
            return Ok(self.home.clone());
        }
        let slot = Arc::clone(lock(&self.pool).entry(addr).or_default());
        let mut slot = slot.lock().await;
        if let Some(channel) = slot.channel.as_ref().filter(|c| !c.is_closed()) {
            return Ok(channel.clone());
        }
        slot.channel = None;
        if slot.down_until.is_some_and(|t| Instant::now() < t) {
            return Err(Error::Unreachable(format!(
                "node {addr}: failed to connect moments ago"
            )));
        }
        let connect = self.opts.read_attempt_timeout.min(self.timeout);
        match Channel::dial(addr, &self.dialer, connect).await {
            Ok(channel) => {
                slot.down_until = None;
                slot.channel = Some(channel.clone());
                Ok(channel)
            }
            Err(e) => {
                slot.down_until = Some(Instant::now() + self.opts.down_for);
                Err(e)
            }
        }
    }

    /// Asks the node at `addr` for its status over the pool.
    async fn status_of(&self, addr: SocketAddr) -> Result<NodeStatus> {
        let channel = self.channel(addr).await?;
        match channel.call(Request::Status, self.timeout).await? {
            Response::Status(status) => Ok(status),
            _ => Err(Error::InvalidData(format!(
                "node {addr} answered status with something else"
            ))),
        }
    }

    /// Walks the ring from the home node (or, if it does not answer, from a node of the
    /// current view) and takes the nodes found as the new view. A walk that finds nobody keeps
    /// the old view.
    async fn refresh(self: &Arc<Self>) {
        let mut starts = vec![self.home.peer()];
        starts.extend(lock(&self.view).nodes().map(|n| n.addr));
        let mut start = None;
        for addr in starts {
            if let Ok(status) = self.status_of(addr).await {
                start = Some(status);
                break;
            }
        }
        if let Some(start) = start {
            let this = Arc::clone(self);
            let walked = walk_ring(start, move |n: NodeRef| {
                let this = Arc::clone(&this);
                async move { this.status_of(n.addr).await }
            })
            .await;
            let view = View::from_members(&walked.nodes);
            if !view.is_empty() {
                *lock(&self.view) = view;
                bump(&self.counters.refreshes);
            }
        }
        *lock(&self.last_refresh) = Some(Instant::now());
    }

    /// Schedules a refresh, at most one per [`RouteOptions::min_refresh_gap`]: at once if the
    /// last was long enough ago, else when the gap has passed. A request that asks while one
    /// is running or scheduled adds nothing.
    fn refresh_soon(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let wait = lock(&self.last_refresh).map_or(Duration::ZERO, |t| {
            self.opts.min_refresh_gap.saturating_sub(t.elapsed())
        });
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            this.refresh().await;
            this.refreshing.store(false, Ordering::Release);
        });
    }
}

/// Refreshes the view every `every` while any clone of the client lives.
async fn refresh_timer(router: Weak<Router>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(router) = router.upgrade() else {
            return;
        };
        router.refresh_soon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::node;
    use chordkv_node::id::in_half_open;

    fn view(ids: &[u8]) -> View {
        View {
            nodes: ids.iter().map(|&n| (node(n).id, node(n))).collect(),
            replicas: Some(3),
        }
    }

    #[test]
    fn the_owner_is_the_first_node_at_or_after_the_key() {
        let v = view(&[10, 50, 90]);
        let key = |b: u8| {
            let mut id = [0u8; 20];
            id[0] = b;
            id[19] = 1; // just past the node id with top byte b
            Id(id)
        };
        let cases = [
            (node(10).id, 10), // a node's own id is its own
            (key(10), 50),
            (node(50).id, 50),
            (key(60), 90),
            (key(90), 10), // past the last node: wraps to the first
            (Id::ZERO, 10),
            (Id::MAX, 10),
        ];
        for (k, want) in cases {
            assert_eq!(v.owner(k), Some(node(want)), "key {k:?}");
        }
        assert_eq!(View::default().owner(Id::ZERO), None);
    }

    #[test]
    fn the_owner_agrees_with_chord_ranges() {
        // owner(k) = n exactly when k ∈ (pred(n), n], for many keys.
        let ids = [3, 10, 50, 90, 200];
        let v = view(&ids);
        for i in 0..2000u32 {
            let k = Id::hash(&i.to_be_bytes());
            let owner = v.owner(k).expect("a node");
            let pos = ids.iter().position(|&n| node(n) == owner).expect("listed");
            let pred = node(ids[(pos + ids.len() - 1) % ids.len()]);
            assert!(in_half_open(pred.id, owner.id, k), "key {k:?} -> {owner:?}");
        }
        // A ring of one owns everything.
        let one = view(&[42]);
        assert_eq!(one.owner(Id::hash(b"x")), Some(node(42)));
    }

    #[test]
    fn only_the_pre_coordination_refusals_let_a_write_fall_back() {
        assert!(refused_before_coordinating(&Error::Unavailable(
            "node is still joining the ring".into()
        )));
        assert!(refused_before_coordinating(&Error::Unavailable(
            "node is leaving the ring".into()
        )));
        // Said after coordinating (the write may be applied): never resent.
        for e in [
            Error::Unavailable("the write reached 1 of the 2 copies required".into()),
            Error::Timeout("no answer".into()),
            Error::Unreachable("connection lost".into()),
            Error::WrongOwner,
        ] {
            assert!(!refused_before_coordinating(&e), "{e}");
        }
    }

    #[test]
    fn stats_add_up() {
        let s = RouteStats {
            direct: 97,
            forwarded: 1,
            fallback_timeout: 1,
            write_in_doubt: 1,
            ..RouteStats::default()
        };
        assert_eq!(s.total(), 100);
        assert!((s.direct_share() - 0.97).abs() < 1e-9);
        assert_eq!(RouteStats::default().direct_share(), 1.0);
    }
}
