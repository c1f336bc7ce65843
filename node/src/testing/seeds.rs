//! Running a seeded simulation over many seeds.
//!
//! `CHORDKV_SEEDS=N` runs `N` seeds (each test has its own default), starting at
//! `CHORDKV_SEED_FROM` (default 1), so `CHORDKV_SEED_FROM=330 CHORDKV_SEEDS=1` replays one seed.
//! Every seed runs even after one has failed, and the failing seeds are reported together at the
//! end: a long run finds all its failures at once.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Run `run` for every seed the environment asks for (`default` seeds from 1 when it asks
/// nothing); panic at the end naming every seed that panicked, with the first one's message.
pub fn run_seeds(default: u64, mut run: impl FnMut(u64)) {
    let count = var("CHORDKV_SEEDS").unwrap_or(default);
    let from = var("CHORDKV_SEED_FROM").unwrap_or(1);
    let mut failed: Vec<(u64, String)> = Vec::new();
    for seed in from..from.saturating_add(count) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(seed))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            failed.push((seed, message));
        }
    }
    if let Some((_, first)) = failed.first() {
        let seeds: Vec<u64> = failed.iter().map(|(s, _)| *s).collect();
        panic!(
            "{} of {count} seeds from {from} failed: {seeds:?}; the first: {first}",
            failed.len()
        );
    }
}

/// A number from the environment, if it is set and parses.
fn var(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}
