//! Lookups while nodes join and crash, against the Chord paper (SIGCOMM 2001 §6.5, Fig. 14):
//! a settled ring of 500 nodes in which nodes join and crash as Poisson processes, each at
//! rate R events per second (R = 0.05 … 0.4: one join and one crash every 20 s … 2.5 s on
//! average), with Chord's timers (stabilize and fix a finger every 30 s; the heartbeat
//! detector at its default 0.5 s), while random keys are looked up from random members.
//!
//! A newcomer joins through a random member; a crash takes a random member off the network at
//! once (`SimOptions::silent_crashes`: what is sent to it is lost and the asker waits out its 1 s
//! timeout). A lookup is **correct** when the owner it names is the key's successor among the
//! nodes that have joined, or among the nodes that own their range (while a newcomer's keys are
//! being handed to it both are right answers), at the moment the answer arrives; **wrong**
//! when it names another node; **failed** when it gives up (its hop limit, or no answer within
//! 30 s). The paper counts both of the last two as failed lookups.
//!
//! `cargo bench --bench churn` (R = 0.05, 0.1, 0.2, 0.4 for 600 simulated seconds each,
//! ~3 minutes); `-- --full` for every R from 0.05 to 0.4 in steps of 0.05 over 1,800 s.
//! Knobs: `CHURN_RATES=5,10,40` (hundredths of events per second), `CHURN_SECS`,
//! `CHURN_NODES`, `CHURN_LOOKUPS_PER_S` (in the whole ring, default 100), `CHURN_SEED`,
//! `CHURN_SUCCESSORS`. Writes `churn.svg`.

mod simbench;

use chordkv_node::testing::sim::{Sim, SimOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simbench::env;
use simbench::plot::{self, Point, Series, XAxis};
use simbench::{Lookups, Table, Tally, Timers, fmt};
use std::time::Instant;

fn main() {
    let full = env::full();
    let default_rates: &[u64] = if full {
        &[5, 10, 15, 20, 25, 30, 35, 40]
    } else {
        &[5, 10, 20, 40]
    };
    let rates = env::env_list("CHURN_RATES", default_rates);
    let secs = env::env_or("CHURN_SECS", if full { 1_800 } else { 600 });
    let n = env::env_or("CHURN_NODES", 500) as usize;
    let per_s = env::env_or("CHURN_LOOKUPS_PER_S", 100);
    let seed = env::env_or("CHURN_SEED", 1);
    let r = env::env_or("CHURN_SUCCESSORS", 8) as usize;
    println!("# Lookups under churn");
    println!();
    println!(
        "{n} nodes at the start, r = {r}, {}, seed {seed}, {secs} simulated seconds per rate, \
         {per_s} lookups per second in the ring; figures per 10,000 lookups.",
        Timers::Chord.describe()
    );
    println!();
    let table = Table::new(&[
        "R (events/s)",
        "joins",
        "crashes",
        "nodes at end",
        "lookups",
        "failed /10k",
        "wrong /10k",
        "mean hops",
        "mean timeouts",
        "secs",
    ]);
    let (mut failed, mut wrong, mut hops) = (Vec::new(), Vec::new(), Vec::new());
    for &rate in &rates {
        let started = Instant::now();
        let rate = rate as f64 / 100.0;
        let run = run(n, r, rate, secs, per_s, seed);
        let t = Tally::of(&run.lookups.done);
        let per_10k = |x: usize| 10_000.0 * x as f64 / t.total() as f64;
        table.row(&[
            fmt(rate, 2),
            run.joins.to_string(),
            run.crashes.to_string(),
            run.members.to_string(),
            t.total().to_string(),
            fmt(per_10k(t.failed), 1),
            fmt(per_10k(t.wrong), 1),
            fmt(t.hops.mean(), 2),
            fmt(t.timeouts.mean(), 3),
            fmt(started.elapsed().as_secs_f64(), 0),
        ]);
        failed.push(Point::at(rate, per_10k(t.failed)));
        wrong.push(Point::at(rate, per_10k(t.wrong)));
        hops.push(Point::at(rate, t.hops.mean()));
    }
    let dir = plot::plots_dir();
    plot::lines(
        &dir.join("churn.svg"),
        &format!("Lookups under churn ({n} nodes, stabilization every 30 s)"),
        ("joins and crashes per second, each (R)", XAxis::Linear),
        "lookups per 10,000",
        &[
            Series::new("failed (gave up)", failed),
            Series::new("wrong owner", wrong),
        ],
    )
    .expect("write the plot");
    println!();
    println!("plot: {}", dir.join("churn.svg").display());
}

struct Run {
    lookups: Lookups,
    joins: usize,
    crashes: usize,
    members: usize,
}

fn run(n: usize, r: usize, rate: f64, secs: u64, per_s: u64, seed: u64) -> Run {
    let mut sim = Sim::new(SimOptions {
        seed,
        port: 7000 + seed as u16,
        node: simbench::options(r, Timers::Chord),
        silent_crashes: true,
        ..SimOptions::default()
    });
    sim.grow_settled(n);
    sim.run_for(30_000);
    let mut rng = StdRng::seed_from_u64(seed ^ rate.to_bits());
    // Exponential gaps between events, in ms.
    let gap = |rng: &mut StdRng| -> u64 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        (-u.ln() / rate * 1000.0) as u64
    };
    let start = sim.now();
    let end = start + secs * 1000;
    let (mut next_join, mut next_crash) = (start + gap(&mut rng), start + gap(&mut rng));
    let (mut joins, mut crashes) = (0, 0);
    let mut lookups = Lookups::default();
    let (mut owed, mut k) = (0.0, 0u64);
    while sim.now() < end {
        let members: Vec<usize> = (0..sim.len())
            .filter(|&i| sim.node(i).is_some_and(|c| c.is_joined()))
            .collect();
        if sim.now() >= next_join {
            let via = members[rng.random_range(0..members.len())];
            sim.add_node(Some(via));
            joins += 1;
            next_join += gap(&mut rng);
        }
        if sim.now() >= next_crash && members.len() > r + 1 {
            sim.crash(members[rng.random_range(0..members.len())]);
            crashes += 1;
            next_crash += gap(&mut rng);
        }
        owed += per_s as f64 / 10.0;
        while owed >= 1.0 {
            let from = members[rng.random_range(0..members.len())];
            if sim.is_up(from) {
                lookups.submit(&mut sim, from, format!("churn-{k}").into_bytes());
                k += 1;
            }
            owed -= 1.0;
        }
        sim.run_for(100);
        collect(&mut sim, &mut lookups);
    }
    // Let the last lookups finish, without churn.
    while lookups.pending() > 0 {
        sim.run_for(100);
        collect(&mut sim, &mut lookups);
    }
    let members = sim.true_ring().len();
    Run {
        lookups,
        joins,
        crashes,
        members,
    }
}

/// Judge the lookups answered so far against the ring as it is now.
fn collect(sim: &mut Sim, lookups: &mut Lookups) {
    let joined = sim.true_ring();
    let installed = sim.true_ring_of(|c| c.is_joined() && c.ring().is_installed());
    lookups.collect(sim, 30_000, |id| {
        let mut owners = simbench::owner_in(&joined, id);
        owners.extend(simbench::owner_in(&installed, id));
        owners
    });
}
