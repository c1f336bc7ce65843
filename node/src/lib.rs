//! chordkv-node: one node of the chordkv distributed key-value store.
//!
//! Read bottom-up (see `docs/architecture.md`): [`id`] places nodes and keys on the ring,
//! [`ring`] is the Chord ring as a pure state machine (who owns what), [`storage`] keeps a
//! node's keys, [`version`] their causal histories, [`session`] is the client's half of the
//! session guarantees, [`kv`] is the key-value layer as a pure state machine on top of the ring
//! (what is stored, and how copies agree), [`node`] composes the two, [`message`] and [`wire`]
//! are what crosses the network, [`server`] drives a node with real sockets, clocks and
//! disks, and [`resp`] is its Redis protocol port. [`testing`] holds the simulator and the
//! history and session checkers.

pub mod auth;
pub(crate) mod bounded;
pub mod error;
pub mod id;
pub mod kv;
pub mod message;
pub mod node;
pub mod resp;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod session;
pub mod storage;
pub mod testing;
pub mod tls;
pub mod version;
pub mod walk;
pub mod wire;

pub use error::{Error, Result};
