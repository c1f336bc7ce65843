//! What keeping the ring costs: messages and bytes each node sends and answers per second for
//! stabilization, fingers and heartbeats (and the data layer's own upkeep), in a settled, idle
//! ring of N = 64 … 4,096 nodes, at the node's default timers and at the Chord paper's 30 s.
//!
//! The real protocol code in the simulator, every message encoded as the wire encodes it
//! (`SimOptions::max_frame`): bytes are frame lengths with their 4-byte prefix, before TCP/IP
//! headers (and TLS, which adds ~22 bytes a record). A request and its answer count as two
//! messages. Kinds: stabilization = `get_neighbors` and `notify`; fingers = `find_successor`
//! (a finger refresh is an iterative lookup: ~½·log2 N of them, each asked by the refreshing
//! node); heartbeats = `ping` and `failure_notice`; data = the data layer's anti-entropy and
//! collection rounds (`sync_tree`, `sync_fetch`, `reap`, …), which run on empty stores here.
//! Measured over a window after a warmup of two of the slowest timer's periods.
//!
//! `cargo bench --bench maintenance` (N up to 1,024, ~2 minutes); `-- --full` adds 4,096
//! (~5 minutes more); `MAINTENANCE_SIZES=64,4096`,
//! `MAINTENANCE_SECS` (the default-timer window, default 20; Chord's is six times longer).

mod simbench;

use chordkv_node::testing::sim::{Sim, SimOptions, Traffic};
use chordkv_node::wire;
use simbench::{Table, Timers, env, fmt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The kinds of each column, by request kind (answers are "KIND answer").
const KINDS: [(&str, &[&str]); 3] = [
    ("stabilization", &["get_neighbors", "notify"]),
    ("fingers", &["find_successor"]),
    ("heartbeats", &["ping", "failure_notice"]),
];

fn main() {
    let default_sizes: &[u64] = if env::full() {
        &[64, 256, 1024, 4096]
    } else {
        &[64, 256, 1024]
    };
    let sizes = env::env_list("MAINTENANCE_SIZES", default_sizes);
    let window = env::env_or("MAINTENANCE_SECS", 20);
    println!("# Maintenance cost");
    println!();
    println!(
        "Per node per second, requests and answers counted both, in a settled idle ring \
         (r = 8, seed 1): messages, and bytes on the wire in parentheses."
    );
    for timers in [Timers::Default, Timers::Chord] {
        let secs = if timers == Timers::Chord {
            window * 6
        } else {
            window
        };
        println!();
        println!(
            "{}, measured over {secs} simulated seconds",
            timers.describe()
        );
        println!();
        let table = Table::new(&[
            "N",
            "stabilization",
            "fingers",
            "heartbeats",
            "data layer",
            "total",
            "secs",
        ]);
        let mut data_kinds = BTreeSet::new();
        for &n in &sizes {
            let started = Instant::now();
            let traffic = measure(n as usize, timers, secs);
            let per = |t: Traffic| {
                let d = (n * secs) as f64;
                format!(
                    "{} ({} B)",
                    fmt(t.messages as f64 / d, 2),
                    fmt(t.bytes as f64 / d, 0)
                )
            };
            let mut cells = vec![n.to_string()];
            let mut rest = traffic.clone();
            for (_, kinds) in KINDS {
                let mut sum = Traffic::default();
                for kind in kinds {
                    for key in [kind.to_string(), format!("{kind} answer")] {
                        if let Some(t) = rest.remove(&key) {
                            sum.messages += t.messages;
                            sum.bytes += t.bytes;
                        }
                    }
                }
                cells.push(per(sum));
            }
            let add = |a: Traffic, t: &Traffic| Traffic {
                messages: a.messages + t.messages,
                bytes: a.bytes + t.bytes,
            };
            cells.push(per(rest.values().fold(Traffic::default(), add)));
            cells.push(per(traffic.values().fold(Traffic::default(), add)));
            cells.push(fmt(started.elapsed().as_secs_f64(), 0));
            table.row(&cells);
            data_kinds.extend(rest.into_keys());
        }
        println!();
        println!(
            "data layer: {}",
            data_kinds.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}

/// Every message sent in a settled ring of `n` over `secs` seconds after a warmup.
fn measure(n: usize, timers: Timers, secs: u64) -> BTreeMap<String, Traffic> {
    let opts = simbench::options(8, timers);
    let warmup = 2 * opts
        .ring
        .stabilize_interval
        .max(opts.ring.fix_fingers_interval);
    let mut sim = Sim::new(SimOptions {
        node: opts,
        max_frame: Some(wire::HARD_MAX_FRAME),
        ..SimOptions::default()
    });
    sim.grow_settled(n);
    sim.run_for(warmup.max(5_000));
    sim.reset_traffic();
    sim.run_for(secs * 1000);
    assert!(sim.ring_errors(true).is_empty(), "the idle ring changed");
    sim.traffic().clone()
}
