//! Lookups after a massive failure, against the Chord papers (SIGCOMM 2001 §6.4, ToN 2003 §V):
//! in a settled ring of N = 1,000 nodes with successor lists of r = 20, a fraction p of the
//! nodes fails at once (p = 0, 0.1 … 0.5); random keys are looked up from random surviving
//! nodes right away, before anything is repaired, and again after the ring has stabilized.
//!
//! The failed nodes vanish from the network (`SimOptions::silent_crashes`): what is sent to
//! them is lost, and the asker waits out its 1 s request timeout, as with hosts that lost
//! power. A lookup is correct when it names the key's true owner among the survivors; it fails
//! when it gives up (its hop limit, or no answer within 60 s). `timeouts` counts the asks a
//! lookup routed around (an unanswered hop, or an owner that did not answer the liveness
//! check). "repaired" is the simulated time until every successor list and predecessor is exact
//! again, "fingers" until every finger is too (checked every second).
//!
//! `cargo bench --bench failure` (~1 minute); `FAILURE_SEEDS`, `FAILURE_LOOKUPS` (per batch,
//! default 2,000), `FAILURE_NODES`, `FAILURE_SUCCESSORS`. Writes `failure.svg`.

mod simbench;

use chordkv_node::testing::sim::{Sim, SimOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use simbench::env;
use simbench::plot::{self, Point, Series, XAxis};
use simbench::{Lookups, Outcome, Table, Tally, Timers, fmt};

fn main() {
    let n = env::env_or("FAILURE_NODES", 1_000) as usize;
    let r = env::env_or("FAILURE_SUCCESSORS", 20) as usize;
    let seeds = env::env_list("FAILURE_SEEDS", &[1, 2, 3]);
    let lookups = env::env_or("FAILURE_LOOKUPS", 2_000) as usize;
    println!("# Lookups after a massive failure");
    println!();
    println!(
        "N = {n}, r = {r}, {}, seeds {seeds:?}, {lookups} lookups per batch and seed; failed \
         nodes vanish (requests to them time out after 1 s).",
        Timers::Default.describe()
    );
    println!();
    let table = Table::new(&[
        "p",
        "correct now",
        "failed now",
        "hops now",
        "timeouts now",
        "repaired (s)",
        "fingers (s)",
        "correct after",
        "hops after",
        "timeouts after",
    ]);
    let (mut correct_now, mut correct_after) = (Vec::new(), Vec::new());
    let (mut timeouts_now, mut timeouts_after) = (Vec::new(), Vec::new());
    for tenth in 0..=5 {
        let p = f64::from(tenth) / 10.0;
        let (mut now, mut after) = (Vec::new(), Vec::new());
        let (mut repaired, mut fingers) = (Vec::new(), Vec::new());
        for &seed in &seeds {
            let run = run(n, r, p, seed, lookups);
            now.extend(run.now);
            after.extend(run.after);
            repaired.push(run.repaired_s);
            fingers.push(run.fingers_s);
        }
        let (t0, t1) = (Tally::of(&now), Tally::of(&after));
        let pct = |t: &Tally| 100.0 * t.correct as f64 / t.total() as f64;
        let worst = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        table.row(&[
            fmt(p, 1),
            format!("{}%", fmt(pct(&t0), 2)),
            t0.failed.to_string(),
            fmt(t0.hops.mean(), 2),
            fmt(t0.timeouts.mean(), 2),
            fmt(worst(&repaired), 1),
            fmt(worst(&fingers), 1),
            format!("{}%", fmt(pct(&t1), 2)),
            fmt(t1.hops.mean(), 2),
            fmt(t1.timeouts.mean(), 2),
        ]);
        correct_now.push(Point::at(p, pct(&t0)));
        correct_after.push(Point::at(p, pct(&t1)));
        timeouts_now.push(Point::with_range(
            p,
            t0.timeouts.mean(),
            t0.timeouts.pct(0.01),
            t0.timeouts.pct(0.99),
        ));
        timeouts_after.push(Point::at(p, t1.timeouts.mean()));
    }
    println!();
    println!(
        "repaired and fingers: the slowest seed. Wrong answers: none unless the table says so."
    );
    let dir = plot::plots_dir();
    plot::lines(
        &dir.join("failure-correct.svg"),
        &format!("Correct lookups after a fraction of {n} nodes fails at once (r = {r})"),
        ("fraction of nodes failed", XAxis::Linear),
        "correct lookups (%)",
        &[
            Series::new("right after the failure", correct_now),
            Series::new("after stabilization", correct_after),
        ],
    )
    .expect("write the plot");
    plot::lines(
        &dir.join("failure-timeouts.svg"),
        &format!("Timeouts per lookup after a fraction of {n} nodes fails at once (r = {r})"),
        ("fraction of nodes failed", XAxis::Linear),
        "timeouts per lookup",
        &[
            Series::new("right after the failure (mean, p1–p99)", timeouts_now),
            Series::new("after stabilization", timeouts_after),
        ],
    )
    .expect("write the plot");
    println!(
        "plots: {}/failure-correct.svg, failure-timeouts.svg",
        dir.display()
    );
}

struct Run {
    now: Vec<Outcome>,
    after: Vec<Outcome>,
    repaired_s: f64,
    fingers_s: f64,
}

fn run(n: usize, r: usize, p: f64, seed: u64, lookups: usize) -> Run {
    let mut sim = Sim::new(SimOptions {
        seed,
        port: 7000 + seed as u16,
        node: simbench::options(r, Timers::Default),
        silent_crashes: true,
        ..SimOptions::default()
    });
    sim.grow_settled(n);
    sim.run_for(2_000);
    let mut rng = StdRng::seed_from_u64(seed ^ (p * 1000.0) as u64);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let failed = (p * n as f64).round() as usize;
    for &i in &order[..failed] {
        sim.crash(i);
    }
    let alive = &order[failed..];
    let start = sim.now();
    let now = batch(&mut sim, &mut rng, alive, lookups, &format!("now-{seed}"));
    sim.run_until(300_000, |s| {
        s.now() % 1000 == 0 && s.ring_errors(false).is_empty()
    });
    let repaired_s = (sim.now() - start) as f64 / 1000.0;
    sim.run_until(300_000, |s| {
        s.now() % 1000 == 0 && s.ring_errors(true).is_empty()
    });
    let fingers_s = (sim.now() - start) as f64 / 1000.0;
    let after = batch(&mut sim, &mut rng, alive, lookups, &format!("after-{seed}"));
    Run {
        now,
        after,
        repaired_s,
        fingers_s,
    }
}

/// `lookups` lookups from random nodes of `alive`, all started at once, judged against the
/// surviving ring.
fn batch(
    sim: &mut Sim,
    rng: &mut StdRng,
    alive: &[usize],
    lookups: usize,
    tag: &str,
) -> Vec<Outcome> {
    let ring = sim.true_ring();
    let mut batch = Lookups::default();
    for k in 0..lookups {
        let from = alive[rng.random_range(0..alive.len())];
        batch.submit(sim, from, format!("fail-{tag}-{k}").into_bytes());
    }
    while batch.pending() > 0 {
        sim.run_for(100);
        batch.collect(sim, 60_000, |id| simbench::owner_in(&ring, id));
    }
    batch.done
}
