//! The wire messages: every request and response a node or client can send, in one file.
//!
//! A connection carries [`Envelope`]s after its handshake (see [`crate::wire`]). Requests carry a
//! [`RequestId`] chosen by the sender and echoed in the response, so many requests share one
//! connection and answers may come back in any order. A failed request is answered with the
//! [`Error`] as its body.
//!
//! Requests fall in three groups: ring maintenance between nodes (Chord's RPCs), data placement
//! between nodes (store operations on the owner and key transfers), and client requests, which any
//! node accepts and coordinates.
//!
//! BOUNDS
//!
//! Every list a message carries has a bound on its length, checked while the frame is decoded,
//! from the length bincode announces before the elements ([`crate::bounded`]): a frame that
//! breaks one is [`Error::InvalidData`] before its list is allocated. Without them a peer could
//! fill an 8 MiB frame with four million one-byte keys, which take some 220 MB and a second to
//! decode. Each bound sits well above what the protocol itself sends, and every sender keeps to
//! it: [`MAX_ITEMS`] for keys and items, [`MAX_NODES`] for nodes, ids and addresses,
//! [`MAX_TREE_NODES`] for hash-tree nodes, and [`crate::version::MAX_SIBLINGS`] for the values of
//! a read. The lists nested inside (version vectors, session floors and dependencies, a state's
//! siblings) have their own bounds beside their types.

use crate::Error;
use crate::id::Id;
use crate::session::{Deps, Floor, SessionWrite};
pub use crate::version::WriteId;
use crate::version::{Dot, VersionVector};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Chosen by the sender of a request, unique among its requests in flight on that connection.
pub type RequestId = u64;

/// Most keys or items one list of a data-placement message carries: the items of a
/// [`Request::Transfer`], [`Request::Replicate`], [`Request::Handoff`] and [`Request::Reap`],
/// the keys of a [`Request::SyncFetch`], and the lists of their answers. The protocol's batches
/// hold at most `kv::Options::transfer_batch` (512 by default, validated against this bound)
/// and `SYNC_BATCH` (256) items; a [`Response::SyncKeys`] listing, bounded by bytes, stops at
/// this count too. 4096 one-byte items cost well under a megabyte to decode.
pub const MAX_ITEMS: usize = 4096;

/// Most nodes, node ids or addresses in one list: successor lists (at most 64, the node's
/// `--successors` bound), finger lists (at most [`crate::id::BITS`] distinct nodes), a lookup's
/// avoid list (one entry per failed hop, within the ring's hop limit of 256 by default) and the
/// peers of a [`Request::Block`].
pub const MAX_NODES: usize = 1024;

/// Most hash-tree nodes one [`Request::SyncTree`] names, and so one [`Response::SyncKeys`]
/// names back: [`crate::kv::tree::FANOUT`]², as the anti-entropy descent sends.
pub const MAX_TREE_NODES: usize = crate::kv::tree::FANOUT * crate::kv::tree::FANOUT;

/// Decodes a list of at most [`MAX_ITEMS`].
fn items<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    crate::bounded::vec::<_, _, MAX_ITEMS>(d)
}

/// Decodes a list of at most [`MAX_NODES`].
fn nodes<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    crate::bounded::vec::<_, _, MAX_NODES>(d)
}

/// Decodes a list of at most [`MAX_TREE_NODES`].
fn tree_nodes<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    crate::bounded::vec::<_, _, MAX_TREE_NODES>(d)
}

/// Decodes a list of at most [`crate::version::MAX_SIBLINGS`].
fn siblings<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    crate::bounded::vec::<_, _, { crate::version::MAX_SIBLINGS }>(d)
}

/// A node as others see it: where it sits on the ring and where to reach it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node's ring identifier.
    pub id: Id,
    /// The address it advertises for peers and clients.
    pub addr: SocketAddr,
}

impl fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addr)
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One frame's worth of meaning: a request or the response to one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    /// A request; the receiver answers with a [`Envelope::Response`] carrying the same id.
    Request {
        /// Echoed in the response.
        id: RequestId,
        /// What is asked.
        body: Request,
    },
    /// The answer to the request with this id.
    Response {
        /// The id of the request this answers.
        id: RequestId,
        /// The result, or why there is none.
        body: Result<Response, Error>,
    },
}

/// Everything a node can be asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    // ---- ring maintenance, node to node ----
    /// Are you alive? Answered with [`Response::Pong`] naming the answering node.
    Ping,
    /// One step of an iterative lookup for the successor of `target`: answered with
    /// [`Response::Route`], either the successor or a closer node to ask next.
    FindSuccessor {
        /// The identifier whose successor is sought.
        target: Id,
        /// Nodes the asker found dead; the answer must not name them. At most [`MAX_NODES`].
        #[serde(deserialize_with = "nodes")]
        avoid: Vec<Id>,
    },
    /// Stabilization: tell me your predecessor and successor list ([`Response::Neighbors`]).
    GetNeighbors,
    /// "I think I am your predecessor" (Chord's notify). Answered with [`Response::Ack`].
    Notify {
        /// The node claiming to be the predecessor.
        node: NodeRef,
    },
    /// A graceful leave: the sender is leaving and names its neighbours so the receiver can
    /// close the gap at once instead of waiting for timeouts.
    Leaving {
        /// The node that leaves.
        node: NodeRef,
        /// Its predecessor, for its successor to adopt.
        pred: Option<NodeRef>,
        /// Its successor list, for its predecessor to adopt. At most [`MAX_NODES`].
        #[serde(deserialize_with = "nodes")]
        succs: Vec<NodeRef>,
    },
    /// A neighbour found `dead` unresponsive: suspect it now unless you heard from it very
    /// recently. Answered with [`Response::Ack`].
    FailureNotice {
        /// The node that stopped answering.
        dead: NodeRef,
    },
    /// "I adopted you as my predecessor": the keys of `(pred, you]` were all handed to you, and
    /// you own that range now. Sent by a successor when a join hand-over completes.
    Adopted {
        /// Where the receiver's range starts: the sender's predecessor before the receiver.
        pred: Option<NodeRef>,
    },

    // ---- data placement, node to node ----
    /// Keys handed over to the receiver, which now owns them (a join or a leave moved the range).
    /// Answered with [`Response::Ack`] only after the items are stored.
    Transfer {
        /// The node handing them over.
        from: NodeRef,
        /// Key/value pairs to store, overwriting what the receiver holds. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        items: Vec<(Vec<u8>, Vec<u8>)>,
        /// Keys the sender handed over earlier and that have since been deleted. At most
        /// [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        deletes: Vec<Vec<u8>>,
        /// The sender is leaving and hands over everything it holds. The receiver takes it only
        /// if the sender is its predecessor; if a newer node sits between them it answers
        /// [`Response::Redirect`] naming that node.
        leaving: bool,
    },
    /// Read `key`'s versions from the receiver's own storage: [`Response::Read`].
    /// [`Error::WrongOwner`] if it does not own the key.
    StoreGet {
        /// The key.
        key: Vec<u8>,
        /// Copies to merge before answering (R), if not the node's default.
        r: Option<u8>,
        /// The client's session floor for the key, as in [`Request::Get`].
        session: Option<Box<Floor>>,
    },
    /// Write a new version of `key` as its owner: [`Response::Written`]. The owner makes the
    /// event (its dot), superseding the versions `context` covers. [`Error::WrongOwner`] if it
    /// does not own the key.
    StoreWrite {
        /// The key.
        key: Vec<u8>,
        /// The value, or `None` to delete (a tombstone version).
        value: Option<Vec<u8>>,
        /// What the writer had seen: the versions this write replaces.
        context: VersionVector,
        /// Chosen by the coordinator and kept across its retries: the owner applies a write id
        /// at most once and answers a retry with the first answer.
        write_id: WriteId,
        /// Copies to store before acknowledging (W), if not the node's default.
        w: Option<u8>,
        /// The client's session part, as in [`Request::Put`].
        session: Option<Box<SessionWrite>>,
        /// What the write replaces beyond `context` ([`WriteMode`]); the owner decides it.
        mode: WriteMode,
    },

    /// Replication: merge these versioned states (key, encoded state) into your copies.
    /// Answered with [`Response::Ack`] once stored. The owner sends it on every write and to
    /// repair replicas (read repair, anti-entropy).
    Replicate {
        /// Keys and their encoded [`crate::version::Versioned`] states. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        items: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Replication: send me your copy of `key` ([`Response::State`]), for a quorum read.
    ReplicaRead {
        /// The key.
        key: Vec<u8>,
    },
    /// Anti-entropy, one level of a hash-tree descent over the range `(from, to]`
    /// (`kv/tree.rs`): the asker's summary hashes of some nodes of level `level`, each
    /// restricted to the range. The receiver answers [`Response::SyncKeys`] naming the nodes
    /// whose hashes differ from its own; at the leaves ([`crate::kv::tree::DEPTH`]) it also
    /// lists its keys in those leaves, each with its entry hash, so the asker can push the
    /// states the receiver lacks and fetch ([`Request::SyncFetch`]) the ones it lacks itself.
    /// At most [`crate::kv::tree::FANOUT`]² nodes per request.
    SyncTree {
        /// The node asking.
        asker: NodeRef,
        /// Start of the range (exclusive).
        from: Id,
        /// End of the range (inclusive).
        to: Id,
        /// The tree level, 0 (the root) to [`crate::kv::tree::DEPTH`] (the leaves).
        level: u8,
        /// (node index within the level, the asker's summary hash of it). At most
        /// [`MAX_TREE_NODES`].
        #[serde(deserialize_with = "tree_nodes")]
        nodes: Vec<(u32, u64)>,
    },
    /// Anti-entropy: send me your states of these keys ([`Response::SyncItems`]), in this
    /// order, within `max_bytes`.
    SyncFetch {
        /// The keys. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        keys: Vec<Vec<u8>>,
        /// Most bytes of keys and states the answer may carry (it carries one state at least,
        /// whatever its size); the answerer's own budget bounds it too.
        max_bytes: u64,
    },
    /// Collection of stray copies: the sender holds these copies of keys the receiver owns and
    /// is not one of their replicas. The receiver merges them, replicates the merged states to
    /// all its `N − 1` replicas, and answers [`Response::HandedOff`] with the keys the sender
    /// may now delete.
    Handoff {
        /// The node handing its copies off.
        from: NodeRef,
        /// Keys and their encoded [`crate::version::Versioned`] states. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        items: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Tombstone collection, sent by a key's owner to its replicas (and to its former replicas
    /// for a while after they left the preference list). With `commit` false: which
    /// of these keys do you hold with exactly this state digest? With `commit` true: delete
    /// those you still hold with exactly this digest. Answered with [`Response::Reaped`].
    Reap {
        /// Keys and the digests of their tombstone-only states at the owner. At most
        /// [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        items: Vec<(Vec<u8>, u64)>,
        /// Delete (true) or only check (false).
        commit: bool,
    },

    // ---- client requests: any node coordinates them ----
    /// Read a key wherever it lives: [`Response::Read`], every concurrent version (sibling)
    /// and the causal context to write back.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Copies to merge before answering (R, 1..=N), if not the node's default.
        r: Option<u8>,
        /// A session read ([`crate::session`]): the answer comes only from a state that meets
        /// this floor, else [`Error::SessionUnmet`], and carries the versions' dependencies.
        /// `None`: plain eventual consistency.
        session: Option<Box<Floor>>,
    },
    /// Write a key wherever it lives: [`Response::Written`]. The write replaces the versions
    /// `context` covers (pass the context of a read to overwrite what it returned); versions it
    /// does not cover stay as siblings. An empty context replaces nothing.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The causal context of the versions this write replaces.
        context: VersionVector,
        /// Copies to store before acknowledging (W, 1..=N), if not the node's default.
        w: Option<u8>,
        /// A session write ([`crate::session`]): applied only on a state that meets the floor,
        /// else [`Error::SessionUnmet`]; it also replaces the floor's written dots, and its
        /// dependencies are stored with the version.
        session: Option<Box<SessionWrite>>,
        /// What the write replaces beyond `context` ([`WriteMode`]); the owner decides it.
        mode: WriteMode,
    },
    /// Delete a key wherever it lives: writes a tombstone version that replaces what `context`
    /// covers. [`Response::Written`].
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The causal context of the versions this delete replaces.
        context: VersionVector,
        /// Copies to store before acknowledging (W, 1..=N), if not the node's default.
        w: Option<u8>,
        /// A session delete, as in [`Request::Put`].
        session: Option<Box<SessionWrite>>,
        /// What the write replaces beyond `context` ([`WriteMode`]); the owner decides it.
        mode: WriteMode,
    },
    /// Find the owner of a key: [`Response::Lookup`].
    Lookup {
        /// The key.
        key: Vec<u8>,
    },
    /// Describe yourself: [`Response::Status`]. `kvctl ring` walks the ring with it.
    Status,
    /// List the live keys of the range this node owns, in ring order after `after` (from the
    /// range's start if `after` lies outside it): [`Response::Keys`]. A page holds at most
    /// `max` keys (at most [`MAX_ITEMS`]) and looks at most four times that many stored states,
    /// so its cost never grows with the data; the RESP port's `FLUSHALL` pages through every
    /// node with it.
    Keys {
        /// Where the page starts (exclusive): the id the last page ended at.
        after: Id,
        /// Most keys in the page.
        max: u32,
    },
    /// Fault injection for tests: from now on, silently drop every request this node sends to
    /// `peers` (an empty list heals), as a network partition would. Refused with
    /// [`Error::InvalidInput`] unless the node runs with `--allow-fault-injection`.
    Block {
        /// The peers to cut this node off from. At most [`MAX_NODES`].
        #[serde(deserialize_with = "nodes")]
        peers: Vec<SocketAddr>,
    },
}

/// What a write replaces, decided by the key's owner when it applies the write. Every mode
/// supersedes what the write's context covers; they differ in what else they do with the
/// versions the owner holds. Only the owner's own copy counts: see SIBLINGS AND
/// READ-MODIFY-WRITE in [`crate::resp`] for what that means when ownership moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WriteMode {
    /// Replace exactly what the context covers; versions it does not cover stay as siblings.
    /// The Dynamo write: a blind write (an empty context) adds a sibling.
    #[default]
    Context,
    /// Replace every version the owner holds, whatever the context: writes through one owner
    /// are ordered as they arrive and the last one stands, as in Redis's `SET`. Versions only
    /// a replica holds (written under another owner) still become siblings when copies merge.
    Overwrite,
    /// Compare-and-set: apply the write only if its context covers every version the owner
    /// holds (nothing was written since the read it came from), else [`Error::Changed`] and
    /// nothing is written. Read-modify-write commands build on it.
    IfUnchanged,
}

/// Everything a node can answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Ping`]: who answered, so the asker can check it reached the right node.
    Pong {
        /// The answering node.
        node: NodeRef,
    },
    /// Answer to [`Request::FindSuccessor`].
    Route(Route),
    /// Answer to [`Request::GetNeighbors`].
    Neighbors {
        /// The answering node's predecessor, if it knows one.
        pred: Option<NodeRef>,
        /// The answering node's successor list, nearest first. At most [`MAX_NODES`].
        #[serde(deserialize_with = "nodes")]
        succs: Vec<NodeRef>,
    },
    /// The request was carried out (and any data it carried is stored).
    Ack,
    /// Nothing was done: send this request to `to` instead (a leaving node's hand-over reached a
    /// node whose predecessor is no longer the leaver).
    Redirect {
        /// The node to send to.
        to: NodeRef,
    },
    /// Answer to [`Request::Get`] and [`Request::StoreGet`].
    Read(ReadReply),
    /// Answer to a write ([`Request::Put`], [`Request::Delete`], [`Request::StoreWrite`]).
    Written {
        /// The dot the owner gave the new version.
        dot: Dot,
        /// Whether the key had a live value before this write (for a delete: whether there was
        /// something to delete).
        existed: bool,
        /// Every one of the key's N copies had stored it when the answer left: a session need
        /// not require it any more ([`crate::session`], STABILITY).
        stable: bool,
    },
    /// Answer to [`Request::ReplicaRead`]: the encoded state, or `None` if the replica has none.
    State(Option<Vec<u8>>),
    /// Answer to [`Request::SyncTree`]: the nodes asked about whose hashes differ here, and
    /// at the leaf level the answerer's keys in those leaves (within the range) with their
    /// entry hashes, in ring order from the start of the range, so the asker can tell exactly
    /// which keys differ.
    SyncKeys {
        /// The nodes asked about that differ, in the order asked. At most [`MAX_TREE_NODES`].
        #[serde(deserialize_with = "tree_nodes")]
        differ: Vec<u32>,
        /// At the leaf level, the keys in the differing leaves and their entry hashes. At most
        /// [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        keys: Vec<(Vec<u8>, u64)>,
        /// Whether `keys` lists every such key; if not, it stops at a size bound and the keys
        /// after the last one listed are compared in a later exchange.
        complete: bool,
        /// The range is the answerer's own and the asker is not one of its replicas: the
        /// asker's copies in it are strays, to hand off ([`Request::Handoff`]) and delete.
        stray: bool,
    },
    /// Answer to [`Request::SyncFetch`]: the answerer's states of the keys asked for that it
    /// holds.
    SyncItems {
        /// Keys and their encoded [`crate::version::Versioned`] states. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        items: Vec<(Vec<u8>, Vec<u8>)>,
        /// Whether every key asked for was considered; if not, the answer stopped at its byte
        /// budget and the keys asked for after the last one answered were left out.
        complete: bool,
    },
    /// Answer to [`Request::Handoff`]: the keys whose copies the sender may delete, because the
    /// owner and all its replicas now store states that include them, and the owner's merged
    /// states of the keys it took, for the sender to bring the copies it keeps up to date.
    HandedOff {
        /// The keys the sender may delete. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        keys: Vec<Vec<u8>>,
        /// Keys and the owner's encoded [`crate::version::Versioned`] states. At most
        /// [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        states: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Answer to [`Request::Reap`]: the keys held with the given digest (or deleted), and those
    /// not held at all.
    Reaped {
        /// The keys held with the digest asked about. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        keys: Vec<Vec<u8>>,
        /// The keys held in no state at all. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        absent: Vec<Vec<u8>>,
    },
    /// Answer to [`Request::Lookup`].
    Lookup(LookupInfo),
    /// Answer to [`Request::Status`].
    Status(NodeStatus),
    /// Answer to [`Request::Keys`].
    Keys {
        /// Live keys, in ring order. At most [`MAX_ITEMS`].
        #[serde(deserialize_with = "items")]
        keys: Vec<Vec<u8>>,
        /// Where the next page starts, or `None` when the range is done.
        next: Option<Id>,
    },
}

impl Response {
    /// The variant's name, for errors about an answer that does not fit its request (the
    /// answer itself may be megabytes long).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Pong { .. } => "Pong",
            Response::Route { .. } => "Route",
            Response::Neighbors { .. } => "Neighbors",
            Response::Ack => "Ack",
            Response::Redirect { .. } => "Redirect",
            Response::Read { .. } => "Read",
            Response::Written { .. } => "Written",
            Response::State { .. } => "State",
            Response::SyncKeys { .. } => "SyncKeys",
            Response::SyncItems { .. } => "SyncItems",
            Response::HandedOff { .. } => "HandedOff",
            Response::Reaped { .. } => "Reaped",
            Response::Lookup { .. } => "Lookup",
            Response::Status { .. } => "Status",
            Response::Keys { .. } => "Keys",
        }
    }
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The live values, one per concurrent version (sibling); empty if the key is absent or
    /// deleted. At most [`crate::version::MAX_SIBLINGS`].
    #[serde(deserialize_with = "siblings")]
    pub values: Vec<Vec<u8>>,
    /// The causal context: pass it back with a write to replace exactly these versions.
    pub context: VersionVector,
    /// For a session read: what the versions' writers depended on, which the reading session
    /// inherits (empty otherwise).
    pub deps: Deps,
    /// For a session read: every one of the key's N copies answered with this state, so a
    /// session need not require it any more.
    pub stable: bool,
}

/// One step of an iterative lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// The target lies between the answering node and this node, its successor: this is the owner.
    Found(NodeRef),
    /// Ask this node next; it is closer to the target.
    Next(NodeRef),
}

/// Where a key lives and what it took to find out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupInfo {
    /// The key's ring identifier (SHA-1 of the key).
    pub key_id: Id,
    /// The node that owns it.
    pub owner: NodeRef,
    /// How many remote nodes the lookup asked (0 when the coordinator answered from its own state).
    pub hops: u32,
    /// How many of those asks timed out or failed and were routed around.
    pub timeouts: u32,
}

/// A node's view of itself and its neighbours.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node itself.
    pub node: NodeRef,
    /// Whether it has finished joining the ring.
    pub joined: bool,
    /// Its predecessor, if known.
    pub pred: Option<NodeRef>,
    /// Its successor list, nearest first. At most [`MAX_NODES`].
    #[serde(deserialize_with = "nodes")]
    pub succs: Vec<NodeRef>,
    /// The distinct nodes in its finger table, in ring order from the node. At most
    /// [`MAX_NODES`].
    #[serde(deserialize_with = "nodes")]
    pub fingers: Vec<NodeRef>,
    /// How many keys it stores: its own and its copies of its predecessors' keys.
    pub keys: u64,
    /// How many of those lie in its own range `(pred, self]`: summed over a consistent ring,
    /// the number of distinct keys.
    pub owned: u64,
    /// How many copies its keys have now (itself included): fewer than `replicas_wanted` when
    /// the ring is smaller than N.
    pub replicas: u32,
    /// The copies it aims for (N).
    pub replicas_wanted: u32,
    /// The successor list length it aims for (r).
    pub successors_wanted: u32,
}

impl Request {
    /// A client write of `key`: [`Request::Put`] of `value`, or [`Request::Delete`] if `None`.
    pub fn write(
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: VersionVector,
        w: Option<u8>,
    ) -> Request {
        match value {
            Some(value) => Request::Put {
                key,
                value,
                context,
                w,
                session: None,
                mode: WriteMode::Context,
            },
            None => Request::Delete {
                key,
                context,
                w,
                session: None,
                mode: WriteMode::Context,
            },
        }
    }

    /// Whether a request to a peer must wait, like an acknowledgement, until everything written
    /// before it is durable. Only a tombstone collection's commit: the replicas delete their
    /// tombstones on the strength of ours, so ours (and our own delete of it) must not be lost to a
    /// crash after they act, or a value whose delete was acknowledged would come back from an old
    /// copy here. Every other request goes at once, our flush in parallel with the peer's work:
    /// - `Replicate`, `Transfer`, `Handoff`, `StoreWrite`: the receiver stores what they carry and
    ///   flushes it before it answers; whatever we delete or acknowledge afterwards rests on that
    ///   answer, not on our copy. If we crash before our flush, the receiver holds a write nobody
    ///   acknowledged: a "maybe", as after any crash.
    /// - `Adopted` and `Leaving`: sent once the receiver acknowledged (durably) every key of the
    ///   range it takes, so it owns them whatever happens here; what we delete then (copies we no
    ///   longer need) may come back after a crash only as strays, which collection removes.
    /// - Reads, anti-entropy digests and fetches, a collection's question (`Reap` without
    ///   `commit`), and ring maintenance carry nothing the receiver keeps on our word.
    pub fn waits_for_flush(&self) -> bool {
        matches!(self, Request::Reap { commit: true, .. })
    }

    /// What a connection must be allowed to send this ([`crate::auth::Access::permits`]): the
    /// requests clients make are reads or writes; the rest maintain the ring and its copies, and
    /// only a node may send them. `StoreGet` is a client's read at the owner (zero-hop routing);
    /// `StoreWrite` is not: it carries a coordinator's write id. `Block` is handled before this
    /// check, and only with fault injection on.
    pub fn clearance(&self) -> crate::auth::Clearance {
        use crate::auth::Clearance;
        match self {
            Request::Get { .. }
            | Request::StoreGet { .. }
            | Request::Lookup { .. }
            | Request::Status
            | Request::Keys { .. }
            | Request::Ping => Clearance::Read,
            Request::Put { .. } | Request::Delete { .. } => Clearance::Write,
            Request::FindSuccessor { .. }
            | Request::GetNeighbors
            | Request::Notify { .. }
            | Request::Leaving { .. }
            | Request::FailureNotice { .. }
            | Request::Adopted { .. }
            | Request::Transfer { .. }
            | Request::StoreWrite { .. }
            | Request::Replicate { .. }
            | Request::ReplicaRead { .. }
            | Request::SyncTree { .. }
            | Request::SyncFetch { .. }
            | Request::Handoff { .. }
            | Request::Reap { .. }
            | Request::Block { .. } => Clearance::Node,
        }
    }

    /// A short name for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::FindSuccessor { .. } => "find_successor",
            Request::GetNeighbors => "get_neighbors",
            Request::Notify { .. } => "notify",
            Request::Leaving { .. } => "leaving",
            Request::Adopted { .. } => "adopted",
            Request::FailureNotice { .. } => "failure_notice",
            Request::Transfer { .. } => "transfer",
            Request::StoreGet { .. } => "store_get",
            Request::StoreWrite { .. } => "store_write",
            Request::Replicate { .. } => "replicate",
            Request::ReplicaRead { .. } => "replica_read",
            Request::SyncTree { .. } => "sync_tree",
            Request::SyncFetch { .. } => "sync_fetch",
            Request::Handoff { .. } => "handoff",
            Request::Reap { .. } => "reap",
            Request::Get { .. } => "get",
            Request::Put { .. } => "put",
            Request::Delete { .. } => "delete",
            Request::Lookup { .. } => "lookup",
            Request::Status => "status",
            Request::Keys { .. } => "keys",
            Request::Block { .. } => "block",
        }
    }
}
