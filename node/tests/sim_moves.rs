//! Keys moving between nodes on join and leave, with messages lost on the way: no acknowledged
//! write is lost, no deleted key comes back, and every key ends up stored only on its owner.

use chordkv_node::chord::Options;
use chordkv_node::message::{Request, Response};
use chordkv_node::sim::{Sim, SimOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// What a key may read as: every value an acknowledged or unanswered write may have left.
#[derive(Default)]
struct Model {
    allowed: BTreeMap<String, BTreeSet<Option<String>>>,
}

impl Model {
    fn write(&mut self, key: &str, value: Option<String>, acked: bool) {
        let set = self
            .allowed
            .entry(key.to_string())
            .or_insert_with(|| [None].into());
        if acked {
            set.clear();
        }
        set.insert(value);
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(SimOptions {
        seed,
        drop_rate: 0.03,
        chord: Options {
            successors: 4,
            ..Options::default()
        },
        ..SimOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    sim.add_node(None);
    let mut live = vec![0usize];
    let op = |sim: &mut Sim, live: &[usize], model: &mut Model, rng: &mut StdRng| {
        // Let the ring move between client operations: joins, hand-overs, lost messages.
        sim.run_for(rng.random_range(0..300));
        let key = format!("k{}", rng.random_range(0..60));
        let via = live[rng.random_range(0..live.len())];
        if rng.random_bool(0.8) {
            let value = format!("v{}", rng.random_range(0..1_000_000));
            let req = Request::Put {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
            };
            let acked = matches!(sim.request(via, req, 20_000), Ok(Response::Ack));
            model.write(&key, Some(value), acked);
        } else {
            let req = Request::Delete {
                key: key.clone().into_bytes(),
            };
            let acked = matches!(sim.request(via, req, 20_000), Ok(Response::Deleted(_)));
            model.write(&key, None, acked);
        }
    };
    for _ in 0..40 {
        op(&mut sim, &live, &mut model, &mut rng);
    }
    for _ in 0..8 {
        live.push(sim.add_node(Some(0)));
        for _ in 0..10 {
            op(&mut sim, &live, &mut model, &mut rng);
        }
    }
    for _ in 0..2 {
        let i = live.remove(rng.random_range(1..live.len()));
        sim.leave(i);
        for _ in 0..10 {
            op(&mut sim, &live, &mut model, &mut rng);
        }
        assert!(
            sim.run_until(60_000, |s| !s.is_up(i)),
            "seed {seed}: n{i} did not finish leaving"
        );
    }
    sim.set_drop_rate(0.0);
    assert!(
        sim.run_until(120_000, |s| s.now() % 100 == 0
            && s.ring_errors(false).is_empty()),
        "seed {seed}: ring did not settle: {:?}",
        sim.ring_errors(false)
    );
    for (key, allowed) in &model.allowed {
        let got = match sim.request(
            live[0],
            Request::Get {
                key: key.clone().into_bytes(),
            },
            20_000,
        ) {
            Ok(Response::Value(v)) => v.map(|v| String::from_utf8(v).expect("utf8")),
            other => panic!("seed {seed}: get {key}: {other:?}"),
        };
        assert!(
            allowed.contains(&got),
            "seed {seed}: {key} reads {got:?}, allowed {allowed:?}"
        );
        let owner = sim.owner_of(key.as_bytes()).expect("owner");
        let holders = sim.holders(key.as_bytes());
        assert!(
            holders.iter().all(|&h| h == owner),
            "seed {seed}: {key} stored on {holders:?}, owner n{owner}"
        );
    }
}

#[test]
fn moves_lose_nothing_and_resurrect_nothing_under_message_loss() {
    let seeds: u64 = std::env::var("CHORDKV_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 1..=seeds {
        run(seed);
    }
}
