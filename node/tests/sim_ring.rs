//! Ring formation and lookups in the deterministic simulator, at sizes real processes cannot reach.

use chordkv_node::message::{Request, Response};
use chordkv_node::testing::sim::{Sim, SimOptions};

/// Grow a ring one node at a time through node 0, then let it stabilize.
fn grow(opts: SimOptions, n: usize, join_every_ms: u64) -> Sim {
    let mut sim = Sim::new(opts);
    sim.grow(n, join_every_ms);
    sim
}

#[test]
fn small_rings_converge() {
    for n in [1, 2, 3, 5, 12] {
        for seed in 1..=5 {
            let mut sim = grow(
                SimOptions {
                    seed,
                    ..SimOptions::default()
                },
                n,
                50,
            );
            let ok = sim.run_until(60_000, |s| s.ring_errors(true).is_empty());
            assert!(ok, "seed {seed}, {n} nodes: {:#?}", sim.ring_errors(true));
        }
    }
}

#[test]
fn lookups_find_true_owner() {
    let mut sim = grow(SimOptions::default(), 20, 20);
    assert!(
        sim.run_until(60_000, |s| s.ring_errors(true).is_empty()),
        "{:#?}",
        sim.ring_errors(true)
    );
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

/// SIGCOMM 2001 §6.3: after stabilization every pointer is exact, and a lookup in a 1,024-node
/// ring takes about ½·log2 N = 5 hops.
#[test]
fn ring_of_1024_converges_exactly_and_lookups_take_half_log_n_hops() {
    let mut sim = grow(SimOptions::default(), 1024, 20);
    let ok = sim.run_until(120_000, |s| {
        s.now() % 1000 == 0 && s.ring_errors(true).is_empty()
    });
    let errs = sim.ring_errors(true);
    assert!(
        ok,
        "not converged by {} ms: {:#?}",
        sim.now(),
        &errs[..errs.len().min(20)]
    );
    let n = 2000;
    let tokens: Vec<_> = (0..n)
        .map(|k| {
            sim.submit(
                k % 1024,
                Request::Lookup {
                    key: format!("key-{k}").into_bytes(),
                },
            )
        })
        .collect();
    // Lookups take a few round trips of at most 10 ms each; 5 s is ample, even with retries.
    sim.run_for(5_000);
    let answers: Vec<_> = tokens.into_iter().map(|t| sim.response(t)).collect();
    let mut hops = 0u64;
    for (k, a) in answers.into_iter().enumerate() {
        match a {
            Some(Ok(Response::Lookup(info))) => {
                assert_eq!(Some(info.owner), sim.true_successor(info.key_id), "key-{k}");
                hops += u64::from(info.hops);
            }
            other => panic!("lookup key-{k}: {other:?}"),
        }
    }
    let mean = hops as f64 / n as f64;
    println!(
        "1024 nodes: converged at {} ms, mean lookup hops {mean:.2} (paper: ~5)",
        sim.now()
    );
    assert!(mean <= 5.0, "mean hops {mean} exceeds ½·log2(1024) = 5");
}

/// The benchmarks build large rings with `Sim::grow_settled` instead of joining node by node:
/// that must be the very state joins and stabilization reach, and one the protocol keeps.
#[test]
fn a_settled_ring_is_the_state_joins_converge_to_and_stays_so() {
    let n = 64;
    let opts = SimOptions {
        seed: 9,
        port: 7100,
        ..SimOptions::default()
    };
    let mut grown = grow(opts.clone(), n, 20);
    assert!(
        grown.run_until(120_000, |s| s.ring_errors(true).is_empty()),
        "{:#?}",
        grown.ring_errors(true)
    );
    let mut settled = Sim::new(opts);
    settled.grow_settled(n);
    assert!(settled.ring_errors(true).is_empty());
    for i in 0..n {
        let (a, b) = (grown.node(i).expect("up"), settled.node(i).expect("up"));
        assert_eq!(a.me(), b.me());
        assert_eq!(a.ring().successors(), b.ring().successors(), "n{i}");
        assert_eq!(a.ring().predecessor(), b.ring().predecessor(), "n{i}");
        assert_eq!(
            a.ring().distinct_fingers(),
            b.ring().distinct_fingers(),
            "n{i}"
        );
        assert!(b.ring().is_installed());
    }
    // The protocol running on it changes nothing, and serves writes and lookups.
    settled.run_for(10_000);
    assert!(
        settled.ring_errors(true).is_empty(),
        "{:#?}",
        settled.ring_errors(true)
    );
    for k in 0..50 {
        let key = format!("settled-{k}").into_bytes();
        let put = Request::Put {
            key: key.clone(),
            value: b"v".to_vec(),
            context: Default::default(),
            w: None,
            session: None,
            mode: Default::default(),
        };
        assert!(settled.request(k % n, put, 10_000).is_ok(), "put {k}");
        match settled.request((k * 7) % n, Request::Lookup { key: key.clone() }, 10_000) {
            Ok(Response::Lookup(info)) => {
                assert_eq!(Some(info.owner), settled.true_successor(info.key_id));
            }
            other => panic!("lookup {k}: {other:?}"),
        }
    }
}
