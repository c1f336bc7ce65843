//! Chord's massive-failure experiment (ToN 2003 §V.D, Table II): a stabilized ring of 1,000 nodes
//! with successor lists of 20 loses half its nodes at once. Lookups issued right after the
//! failure, before any repair, and again after stabilization, must all find the live successor of
//! their key. Prints mean hops and timeouts per lookup (the paper reports about 5 and 5).

use chordkv_node::message::{Request, Response};
use chordkv_node::node::Options;
use chordkv_node::ring::{self, detector::DetectorOptions};
use chordkv_node::testing::sim::{Sim, SimOptions};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Issue `n` lookups from random live nodes at once, wait for all, and check every answer
/// against the true ring. Returns (mean hops, mean timeouts).
fn lookups(sim: &mut Sim, live: &[usize], n: usize, tag: &str, seed: u64) -> (f64, f64) {
    let tokens: Vec<_> = (0..n)
        .map(|k| {
            let key = format!("{tag}-{k}").into_bytes();
            sim.submit(live[(k * 7919) % live.len()], Request::Lookup { key })
        })
        .collect();
    sim.run_for(30_000);
    let (mut hops, mut timeouts) = (0u64, 0u64);
    for (k, t) in tokens.into_iter().enumerate() {
        match sim.response(t) {
            Some(Ok(Response::Lookup(info))) => {
                assert_eq!(
                    Some(info.owner),
                    sim.true_successor(info.key_id),
                    "seed {seed}: {tag} lookup {k} found a wrong or dead owner"
                );
                hops += u64::from(info.hops);
                timeouts += u64::from(info.timeouts);
            }
            other => panic!("seed {seed}: {tag} lookup {k}: {other:?}"),
        }
    }
    (hops as f64 / n as f64, timeouts as f64 / n as f64)
}

#[test]
fn half_of_a_1000_node_ring_fails_at_once_and_every_lookup_is_still_correct() {
    let seed = 7;
    let nodes = 1000;
    let mut sim = Sim::new(SimOptions {
        seed,
        node: Options {
            ring: ring::Options {
                successors: 20,
                // Twenty-one neighbours each: probe them less often to keep the simulation quick.
                detector: DetectorOptions {
                    interval: 5_000,
                    ..DetectorOptions::default()
                },
                ..ring::Options::default()
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    sim.add_node(None);
    for _ in 1..nodes {
        sim.add_node(Some(0));
        sim.run_for(20);
    }
    assert!(
        sim.run_until(300_000, |s| s.now() % 1000 == 0
            && s.ring_errors(false).is_empty()),
        "seed {seed}: ring did not stabilize"
    );
    let (h0, t0) = lookups(
        &mut sim,
        &(0..nodes).collect::<Vec<_>>(),
        1000,
        "before",
        seed,
    );

    let mut order: Vec<usize> = (0..nodes).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let (dead, live) = order.split_at(nodes / 2);
    for &i in dead {
        sim.crash(i);
    }
    let (h1, t1) = lookups(&mut sim, live, 1000, "during", seed);
    assert!(
        sim.run_until(300_000, |s| s.now() % 1000 == 0
            && s.ring_errors(false).is_empty()),
        "seed {seed}: ring did not repair: {:?}",
        &sim.ring_errors(false)[..3]
    );
    let (h2, t2) = lookups(&mut sim, live, 1000, "after", seed);
    println!("1000 nodes, r = 20, seed {seed}: mean hops / timeouts per lookup");
    println!("  before the failure        {h0:.2} / {t0:.2}");
    println!("  right after half failed   {h1:.2} / {t1:.2}   (ToN 2003 Table II: ~5 / ~5)");
    println!("  after stabilization       {h2:.2} / {t2:.2}");
}
