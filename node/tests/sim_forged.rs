//! Forged versions, in simulation (FORGED VERSIONS in `src/version/mod.rs`): a client context
//! that gives the key's owner a counter near `u64::MAX` is refused, and so is one that names
//! another node above the ceiling; a state a peer sends that claims a dot of the receiver's
//! beyond what it issued is adopted without it, and reported. Either way the owner's writes go
//! on, numbered from its own counter, also after it crashed and restarted, and the history
//! checker finds nothing lost.

use chordkv_node::Error;
use chordkv_node::message::{Request, Response};
use chordkv_node::node::{Event, Options};
use chordkv_node::testing::history::History;
use chordkv_node::testing::seeds::run_seeds;
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::{Dot, MAX_COUNTER, VersionVector, Versioned};
use chordkv_node::{kv, ring};

const NODES: usize = 4;

fn ring(seed: u64) -> Sim {
    let mut sim = Sim::new(SimOptions {
        seed,
        node: Options {
            ring: ring::Options {
                successors: 3,
                ..ring::Options::default()
            },
            ..Options::default()
        },
        record_events: true,
        ..SimOptions::default()
    });
    sim.grow(NODES, 200);
    assert!(sim.settle(60_000), "seed {seed}: the ring did not form");
    sim
}

/// Writes through `via`, recording it in `h`; the dot if acknowledged.
fn write(
    sim: &mut Sim,
    h: &mut History,
    via: usize,
    key: &[u8],
    value: &str,
    context: VersionVector,
) -> Result<Dot, Error> {
    let value = Some(value.as_bytes().to_vec());
    let id = h.record_write(key, value.clone(), context.clone());
    match sim.request(
        via,
        Request::write(key.to_vec(), value, context, None),
        15_000,
    ) {
        Ok(Response::Written { dot, .. }) => {
            h.record_ack(id, dot);
            Ok(dot)
        }
        Ok(other) => panic!("a write answered {other:?}"),
        Err(e) => Err(e),
    }
}

fn context_of(sim: &mut Sim, via: usize, key: &[u8]) -> VersionVector {
    let get = Request::Get {
        key: key.to_vec(),
        r: None,
        session: None,
    };
    match sim.request(via, get, 15_000) {
        Ok(Response::Read(r)) => r.context,
        other => panic!("a read answered {other:?}"),
    }
}

/// Writes of 10 keys owned by `owner`, through every node in turn; each is numbered below
/// the ceiling.
fn writes_go_on(sim: &mut Sim, h: &mut History, owner: usize, seed: u64, tag: &str) {
    let keys: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("{tag}-{i}").into_bytes())
        .filter(|k| sim.owner_of(k) == Some(owner))
        .take(10)
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let dot = write(
            sim,
            h,
            i % NODES,
            key,
            &format!("{tag}-{i}"),
            VersionVector::new(),
        )
        .unwrap_or_else(|e| panic!("seed {seed}: {tag}: a write of the owner's failed: {e}"));
        assert!(dot.counter < MAX_COUNTER, "seed {seed}: {tag}: {dot}");
    }
}

#[test]
fn forged_counters_in_contexts_and_states_do_not_stop_an_owners_writes() {
    run_seeds(3, |seed| {
        let mut sim = ring(seed);
        let mut h = History::new();
        let key = b"target".to_vec();
        let owner = sim.owner_of(&key).expect("an owner");
        let me = sim.node_ref(owner).id;
        let other = sim.node_ref((owner + 1) % NODES).id;
        write(&mut sim, &mut h, 0, &key, "honest", VersionVector::new())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));

        // Contexts: the owner's counter beyond what it issued, another node's above the ceiling.
        for (actor, claimed) in [(me, u64::MAX - 1), (other, u64::MAX - 1), (me, 1 << 30)] {
            let forged: VersionVector = [(actor, claimed)].into_iter().collect();
            match write(
                &mut sim,
                &mut h,
                (owner + 2) % NODES,
                &key,
                "forged",
                forged,
            ) {
                Err(Error::InvalidInput(m)) if m.contains("forged") => {}
                other => panic!("seed {seed}: a context naming {actor}:{claimed}: {other:?}"),
            }
        }
        writes_go_on(&mut sim, &mut h, owner, seed, "after-contexts");

        // A peer's state claiming the owner's dot near the maximum.
        sim.take_events();
        let mut state = Versioned::empty();
        state.raise_dot_floor(u64::MAX - 2);
        state.write(me, &VersionVector::new(), Some(b"planted".to_vec()));
        let replicate = Request::Replicate {
            items: vec![(key.clone(), state.encode())],
        };
        assert!(matches!(
            sim.request(owner, replicate, 5_000),
            Ok(Response::Ack)
        ));
        let reported = sim.take_events().into_iter().any(|(_, i, e)| {
            i == owner && matches!(e, Event::Kv(kv::Event::ForgedDots { claimed, .. }) if claimed == u64::MAX - 1)
        });
        assert!(reported, "seed {seed}: the forged state was not reported");
        let context = context_of(&mut sim, owner, &key);
        assert!(
            context.get(&me) < MAX_COUNTER,
            "seed {seed}: the forged dot reached the key's context: {context:?}"
        );
        write(&mut sim, &mut h, owner, &key, "resolved", context)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        writes_go_on(&mut sim, &mut h, owner, seed, "after-state");

        // And after the owner crashed and came back on its storage.
        sim.crash(owner);
        sim.restart(owner, Some((owner + 1) % NODES));
        assert!(
            sim.settle(60_000),
            "seed {seed}: the owner did not come back"
        );
        writes_go_on(&mut sim, &mut h, owner, seed, "after-restart");

        sim.run_for(10_000);
        if let Err(e) = sim.check_history(&mut h, 3) {
            panic!("seed {seed}: {e}");
        }
    });
}
