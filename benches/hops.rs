//! Lookup path length at scale, against the Chord paper (SIGCOMM 2001 §6.3, Fig. 10): in a
//! stabilized ring of N nodes a lookup takes about ½·log2 N hops.
//!
//! The real protocol code in the deterministic simulator: rings of N = 2^3 … 2^12 nodes
//! (2^14 = 16,384 with `--full`), built settled (`Sim::grow_settled`: every successor list,
//! predecessor and finger as the protocol converges to them, which tests/sim_ring checks
//! against rings grown by joins), then running the protocol at its default timers while
//! random keys are looked up from random nodes (`Request::Lookup`, the request `kvctl lookup`
//! sends). Several seeds per N: each seed is another ring (another port, so other node ids),
//! other keys and other starting nodes. Both successor list lengths r = 8 and r = 16.
//!
//! HOW A HOP IS COUNTED. Lookups are iterative: the node a client asks routes one step from its
//! own state, then asks each next node in turn (`FindSuccessor`) until one answers "the owner is
//! my successor". `hops` is the number of remote nodes asked. A lookup the first node answers
//! from its own state is 0 hops; one where the first node's closest preceding node is the key's
//! predecessor is 1. This is the Chord paper's count (the nodes a recursive lookup passes
//! through before the key's predecessor forwards to the owner). Simulators that count "nodes a
//! lookup message visits, counting the answer's return to the originator as one" count one
//! more per remote lookup (hops + 1; still 0 for a lookup answered locally): the `visits`
//! column. The ping that checks the owner is alive before answering a client is not a hop.
//!
//! `cargo bench --bench hops` (N up to 4,096, ~2 minutes); `-- --full` for 8,192 and 16,384
//! as well (see docs/benchmarks.md for its duration). Knobs: `HOPS_SIZES=64,4096`,
//! `HOPS_SEEDS=1,2,3`, `HOPS_LOOKUPS` (per ring, default 10,000), `HOPS_SUCCESSORS=8,16`.
//! Writes `hops.svg` to the plots directory (`CHORDKV_PLOTS_DIR`, default target/plots).

mod simbench;

use chordkv_node::testing::sim::{Sim, SimOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simbench::env;
use simbench::plot::{self, Point, Series, XAxis};
use simbench::{Dist, Lookups, Outcome, Table, Tally, Timers, fmt};
use std::time::Instant;

fn main() {
    let top = if env::full() { 14 } else { 12 };
    let default_sizes: Vec<u64> = (3..=top).map(|b| 1u64 << b).collect();
    let sizes = env::env_list("HOPS_SIZES", &default_sizes);
    let seeds = env::env_list("HOPS_SEEDS", &[1, 2, 3]);
    let lookups = env::env_or("HOPS_LOOKUPS", 10_000) as usize;
    let lists = env::env_list("HOPS_SUCCESSORS", &[8, 16]);
    println!("# Lookup hops at scale");
    println!();
    println!(
        "{lookups} lookups of random keys from random nodes per ring, seeds {seeds:?} (one ring \
         each), {}.",
        Timers::Default.describe()
    );
    println!();
    println!(
        "hops: the remote nodes an iterative lookup asks (FindSuccessor), from the node the \
         client asked up to the key's predecessor, which names the owner; 0 when the first node \
         answers from its own state (the Chord paper's count). visits: the nodes a lookup \
         message visits, counting the answer's return to the originator as one = hops + 1 for \
         a remote lookup, 0 for a local one. failed: lookups that gave up; wrong: lookups that \
         named another node than the true owner."
    );
    let mut plotted = Vec::new();
    for (index, &r) in lists.iter().enumerate() {
        // Each list length's points a little apart on the plot, so their bars do not overlap.
        let shift = 2f64.powf(0.1 * (index as f64 - 0.5));
        println!();
        println!("successor list r = {r}");
        println!();
        let table = Table::new(&[
            "N",
            "½·log2 N",
            "mean",
            "p1",
            "median",
            "p99",
            "max",
            "visits mean",
            "failed",
            "wrong",
            "secs",
        ]);
        let mut points = Vec::new();
        for &n in &sizes {
            let started = Instant::now();
            let mut all = Vec::new();
            for &seed in &seeds {
                all.extend(run(n as usize, r as usize, seed, lookups));
            }
            let t = Tally::of(&all);
            let visits = Dist::new(
                t.hops
                    .values()
                    .iter()
                    .map(|&h| if h > 0.0 { h + 1.0 } else { 0.0 })
                    .collect(),
            );
            let half_log = 0.5 * (n as f64).log2();
            table.row(&[
                n.to_string(),
                fmt(half_log, 2),
                fmt(t.hops.mean(), 2),
                fmt(t.hops.pct(0.01), 0),
                fmt(t.hops.pct(0.5), 0),
                fmt(t.hops.pct(0.99), 0),
                fmt(t.hops.max(), 0),
                fmt(visits.mean(), 2),
                t.failed.to_string(),
                t.wrong.to_string(),
                fmt(started.elapsed().as_secs_f64(), 1),
            ]);
            points.push(Point::with_range(
                n as f64 * shift,
                t.hops.mean(),
                t.hops.pct(0.01),
                t.hops.pct(0.99),
            ));
        }
        plotted.push(Series::new(
            format!("mean hops, p1–p99 bars, r = {r}"),
            points,
        ));
    }
    let reference = sizes
        .iter()
        .map(|&n| Point::at(n as f64, 0.5 * (n as f64).log2()))
        .collect();
    plotted.push(Series::reference("½·log2 N", reference));
    let path = plot::plots_dir().join("hops.svg");
    plot::lines(
        &path,
        "Lookup hops against ring size (simulated, settled ring)",
        ("nodes N", XAxis::Log2),
        "hops (remote nodes asked)",
        &plotted,
    )
    .expect("write the plot");
    println!();
    println!("plot: {}", path.display());
}

/// `lookups` lookups in a settled ring of `n` nodes with successor lists of `r`.
fn run(n: usize, r: usize, seed: u64, lookups: usize) -> Vec<Outcome> {
    let mut sim = Sim::new(SimOptions {
        seed,
        port: 7000 + seed as u16,
        node: simbench::options(r, Timers::Default),
        ..SimOptions::default()
    });
    sim.grow_settled(n);
    // Let the protocol run a while first: heartbeats, stabilization and fingers at work.
    sim.run_for(1_000);
    assert!(sim.ring_errors(true).is_empty(), "the settled ring drifted");
    let ring = sim.true_ring();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut batch = Lookups::default();
    for k in 0..lookups {
        let from = rng.random_range(0..n);
        batch.submit(&mut sim, from, format!("hops-{seed}-{k}").into_bytes());
    }
    while batch.pending() > 0 {
        sim.run_for(100);
        batch.collect(&mut sim, 30_000, |id| simbench::owner_in(&ring, id));
    }
    batch.done
}
