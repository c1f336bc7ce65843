//! Test support: the deterministic simulator, the history checker and a storage that fails on
//! demand.
//!
//! Nothing in a running node uses this module. It lives in the library, not under `tests/`,
//! because the node crate's integration tests, the workspace's system tests and its benchmarks
//! all drive the simulator and judge histories with the checker, and only a library module can
//! be shared between them.

pub mod cargo;
pub mod faulty;
pub mod history;
pub mod seeds;
pub mod sessions;
pub mod sim;
pub mod zave;
