//! Ring formation and lookups in the deterministic simulator, at sizes real processes cannot reach.

use chordkv_node::message::{Request, Response};
use chordkv_node::sim::{Sim, SimOptions};

/// Grow a ring one node at a time through node 0, then let it stabilize.
fn grow(opts: SimOptions, n: usize, join_every_ms: u64) -> Sim {
    let mut sim = Sim::new(opts);
    sim.add_node(None);
    for _ in 1..n {
        sim.add_node(Some(0));
        sim.run_for(join_every_ms);
    }
    sim
}

#[test]
fn small_rings_converge() {
    for n in [1, 2, 3, 5, 12] {
        for seed in 1..=5 {
            let mut sim = grow(SimOptions { seed, ..SimOptions::default() }, n, 50);
            let ok = sim.run_until(60_000, |s| s.ring_errors(true).is_empty());
            assert!(ok, "seed {seed}, {n} nodes: {:#?}", sim.ring_errors(true));
        }
    }
}

#[test]
fn lookups_find_true_owner() {
    let mut sim = grow(SimOptions::default(), 20, 20);
    assert!(sim.run_until(60_000, |s| s.ring_errors(true).is_empty()), "{:#?}", sim.ring_errors(true));
    for k in 0..100 {
        let key = format!("key-{k}").into_bytes();
        let want = sim.owner_of(&key).expect("owner");
        let via = k % 20;
        match sim.request(via, Request::Lookup { key: key.clone() }, 10_000) {
            Ok(Response::Lookup(info)) => assert_eq!(info.owner, sim.node_ref(want)),
            other => panic!("lookup {k}: {other:?}"),
        }
    }
}

#[test]
fn ring_of_1024_converges_exactly() {
    let t = std::time::Instant::now();
    let mut sim = grow(SimOptions::default(), 1024, 20);
    eprintln!("grown at {} ms logical, {:?} wall, {} msgs", sim.now(), t.elapsed(), sim.delivered);
    let ok = sim.run_until(600_000, |s| s.now() % 1000 == 0 && s.ring_errors(true).is_empty());
    let errs = sim.ring_errors(true);
    eprintln!("converged={ok} at {} ms logical, {:?} wall, {} msgs, {} errors", sim.now(), t.elapsed(), sim.delivered, errs.len());
    assert!(errs.is_empty(), "{:#?}", &errs[..errs.len().min(20)]);
    let mut hops = 0u64;
    let n = 2000;
    for k in 0..n {
        let key = format!("key-{k}").into_bytes();
        match sim.request(k % 1024, Request::Lookup { key: key.clone() }, 10_000) {
            Ok(Response::Lookup(info)) => {
                assert_eq!(Some(info.owner), sim.true_successor(info.key_id));
                hops += u64::from(info.hops);
            }
            other => panic!("lookup {k}: {other:?}"),
        }
    }
    eprintln!("mean hops {}", hops as f64 / n as f64);
}
