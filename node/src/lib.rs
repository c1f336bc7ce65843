//! chordkv-node: one node of the chordkv distributed key-value store.
//!
//! Read bottom-up (see `docs/architecture.md`): [`id`] places nodes and keys on the ring,
//! [`chord`] is the protocol as a pure state machine, [`storage`] keeps a node's keys,
//! [`message`] and [`wire`] are what crosses the network, and [`server`] drives the state machine
//! with real sockets, clocks and disks.

pub mod chord;
pub mod error;
pub mod history;
pub mod id;
pub mod message;
pub mod server;
pub mod sim;
pub mod storage;
pub mod version;
pub mod wire;

pub use error::{Error, Result};
