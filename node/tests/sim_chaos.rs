//! Crashes and restarts during a workload, in simulation, many seeds. Unique writes go to their
//! own keys; concurrent writers share a few hot keys, some writing blind. Nodes crash at random
//! (at most two at a time) and come back on their old storage. After the last restart and a
//! quiet period for repair, every acknowledged write must be in the data (as a value or a
//! sibling, or superseded by a write that saw it), and the owner of every key and its next
//! N − 1 successors must hold identical states. The seed is printed on failure;
//! `CHORDKV_SEEDS=200` runs more, `CHORDKV_SEED_FROM` picks the first ([`run_seeds`]).

use chordkv_node::message::{Request, Response};
use chordkv_node::node::Options;
use chordkv_node::testing::history::History;
use chordkv_node::testing::seeds::run_seeds;
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::VersionVector;
use chordkv_node::{kv, ring};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 8;

fn write(sim: &mut Sim, via: usize, key: Vec<u8>, blind: bool, h: &mut History, seq: &mut u64) {
    let context = if blind {
        VersionVector::new()
    } else {
        match sim.request(
            via,
            Request::Get {
                key: key.clone(),
                r: None,
                session: None,
            },
            15_000,
        ) {
            Ok(Response::Read(r)) => r.context,
            _ => return,
        }
    };
    *seq += 1;
    let value = format!("v{seq}").into_bytes();
    let id = h.record_write(&key, Some(value.clone()), context.clone());
    let req = Request::Put {
        key,
        value,
        context,
        w: None,
        session: None,
        mode: Default::default(),
    };
    if let Ok(Response::Written { dot, .. }) = sim.request(via, req, 15_000) {
        h.record_ack(id, dot);
    }
}

/// A node that is in the ring (not still joining), to restart others through: a node joining
/// through one that is itself still joining waits for it.
fn member(sim: &Sim) -> usize {
    (0..NODES)
        .find(|&i| sim.node(i).is_some_and(|c| c.is_joined()))
        .expect("some node is in the ring")
}

fn run(seed: u64) {
    let mut sim = Sim::new(SimOptions {
        seed,
        drop_rate: 0.01,
        node: Options {
            ring: ring::Options {
                successors: 4,
                ..ring::Options::default()
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    sim.grow(NODES, 200);
    assert!(sim.settle(60_000), "seed {seed}: ring did not form");
    let mut h = History::new();
    let mut seq = 0u64;
    let mut down: Vec<usize> = Vec::new();
    for step in 0..150 {
        sim.run_for(rng.random_range(0..200));
        // Now and then a node crashes (never more than two at once) or a crashed one returns.
        if step % 10 == 5 {
            if down.len() < 2 && rng.random_bool(0.7) {
                let up: Vec<usize> = (0..NODES).filter(|i| sim.is_up(*i)).collect();
                let victim = up[rng.random_range(0..up.len())];
                sim.crash(victim);
                down.push(victim);
            } else if let Some(i) = down.pop() {
                let via = member(&sim);
                sim.restart(i, Some(via));
            }
        }
        let up: Vec<usize> = (0..NODES).filter(|i| sim.is_up(*i)).collect();
        let via = up[rng.random_range(0..up.len())];
        if rng.random_bool(0.6) {
            write(
                &mut sim,
                via,
                format!("u{step}").into_bytes(),
                false,
                &mut h,
                &mut seq,
            );
        } else {
            let key = format!("hot{}", rng.random_range(0..3)).into_bytes();
            let blind = rng.random_bool(0.3);
            write(&mut sim, via, key, blind, &mut h, &mut seq);
        }
    }
    for i in down {
        let via = member(&sim);
        sim.restart(i, Some(via));
    }
    sim.set_drop_rate(0.0);
    assert!(
        sim.settle(120_000),
        "seed {seed}: ring did not heal: {:?}",
        sim.ring_errors(false)
    );
    sim.run_for(20_000); // anti-entropy
    if let Err(e) = sim.check_history(&mut h, 3) {
        panic!("seed {seed}: {e}");
    }
    let acked = h.writes().iter().filter(|w| w.ack.is_some()).count();
    assert!(acked > 50, "seed {seed}: only {acked} writes acknowledged");
}

#[test]
fn crashes_and_restarts_lose_no_acknowledged_write_and_replicas_converge() {
    run_seeds(10, run);
}

fn run_partition(seed: u64) {
    let mut sim = Sim::new(SimOptions {
        seed,
        node: Options {
            ring: ring::Options {
                successors: 4,
                ..ring::Options::default()
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0xcafe);
    sim.grow(NODES, 200);
    assert!(sim.settle(60_000), "seed {seed}: ring did not form");
    let mut h = History::new();
    let mut seq = 0u64;
    let (a, b): (Vec<usize>, Vec<usize>) = (0..NODES).partition(|_| rng.random_bool(0.5));
    let (a, b) = if a.is_empty() || b.is_empty() {
        ((0..NODES / 2).collect(), (NODES / 2..NODES).collect())
    } else {
        (a, b)
    };
    for step in 0..60 {
        sim.run_for(rng.random_range(0..300));
        if step == 10 {
            sim.partition(&a, &b);
        }
        if step == 45 {
            sim.heal();
        }
        let via = rng.random_range(0..NODES);
        let key = if rng.random_bool(0.5) {
            format!("u{step}")
        } else {
            format!("hot{}", rng.random_range(0..3))
        };
        write(
            &mut sim,
            via,
            key.into_bytes(),
            rng.random_bool(0.2),
            &mut h,
            &mut seq,
        );
    }
    assert!(
        sim.settle(180_000),
        "seed {seed}: the two sides did not merge back into one ring: {:?}",
        sim.ring_errors(false)
    );
    sim.run_for(20_000); // anti-entropy
    if let Err(e) = sim.check_history(&mut h, 3) {
        panic!("seed {seed}: {e}");
    }
}

#[test]
fn a_healed_partition_merges_back_into_one_ring_and_keeps_every_acknowledged_write() {
    run_seeds(10, run_partition);
}

/// A write that the key's owner stored but could not replicate before it crashed is applied a
/// second time when the coordinator retries it at the next owner, which never saw the first
/// version. When the first owner comes back and anti-entropy merges the two, the write must be
/// one version again, not two siblings of the same value (found by `tests/replication.rs` under
/// load; this is its deterministic reproduction).
#[test]
fn a_write_applied_by_a_crashed_owner_and_again_on_retry_reads_as_one_version() {
    let mut sim = Sim::new(SimOptions::default());
    sim.grow(5, 50);
    assert!(sim.run_until(60_000, |s| s.ring_errors(false).is_empty()));
    let key = b"written once".to_vec();
    let owner = sim.owner_of(&key).expect("a live owner");
    // The owner's predecessor coordinates: it is none of the owner's replicas.
    let ring = sim.true_ring();
    let at = ring
        .iter()
        .position(|n| n.addr == Sim::addr(owner))
        .expect("the owner is on the ring");
    let before = ring[(at + ring.len() - 1) % ring.len()].addr;
    let coordinator = sim.index_of(before).expect("a node of the ring");
    let rest: Vec<usize> = (0..5).filter(|&i| i != owner && i != coordinator).collect();

    // The owner hears the coordinator but none of its replicas: it stores the write and waits
    // for acknowledgements that cannot come. Then it crashes.
    sim.partition(&[owner], &rest);
    let put = Request::Put {
        key: key.clone(),
        value: b"v".to_vec(),
        context: VersionVector::new(),
        w: None,
        session: None,
        mode: Default::default(),
    };
    let token = sim.submit(coordinator, put);
    assert!(
        sim.run_until(5_000, |s| s.holders(&key) == [owner]),
        "the owner did not store the write"
    );
    sim.crash(owner);
    sim.heal();

    // The coordinator retries at the next owner, which acknowledges.
    assert!(sim.run_until(30_000, |s| s.ring_errors(false).is_empty()));
    let mut answer = sim.response(token);
    for _ in 0..3_000 {
        if answer.is_some() {
            break;
        }
        sim.run_for(10);
        answer = sim.response(token);
    }
    assert!(
        matches!(answer, Some(Ok(Response::Written { .. }))),
        "{answer:?}"
    );

    // The first owner returns with its copy; anti-entropy merges the two.
    sim.restart(owner, Some(coordinator));
    assert!(sim.run_until(30_000, |s| s.ring_errors(false).is_empty()));
    sim.run_for(10_000);
    match sim.request(
        coordinator,
        Request::Get {
            key: key.clone(),
            r: None,
            session: None,
        },
        10_000,
    ) {
        Ok(Response::Read(read)) => assert_eq!(
            read.values,
            [b"v".to_vec()],
            "one write, acknowledged once, reads as {} siblings",
            read.values.len()
        ),
        other => panic!("read: {other:?}"),
    }
}

/// A coordinator's retry of a write that reaches an owner after four newer writes through the
/// same coordinator: the key may have forgotten that it applied it (it remembers four write
/// ids per coordinator), so applying it again could bring back a version the newer writes
/// replaced. The owner refuses it as ambiguous, and the key is left as the newer writes made it
/// (found by `sim_sessions`, seed 348, where the re-applied write came back beside a write whose
/// writer had seen and replaced it).
#[test]
fn a_retry_the_key_may_have_forgotten_is_refused_not_applied_twice() {
    use chordkv_node::Error;
    use chordkv_node::message::WriteId;
    let mut sim = Sim::new(SimOptions::default());
    sim.grow(3, 50);
    assert!(sim.settle(60_000));
    let key = b"retried late".to_vec();
    let owner = sim.owner_of(&key).expect("a live owner");
    let coordinator = sim.node_ref((owner + 1) % 3).id;
    let store = |seq: u64, value: &str, context: VersionVector| Request::StoreWrite {
        key: key.clone(),
        value: Some(value.as_bytes().to_vec()),
        context,
        write_id: WriteId {
            coordinator,
            incarnation: 1,
            seq,
        },
        w: None,
        session: None,
        mode: Default::default(),
    };
    // Write 1, then four newer writes through the same coordinator, each replacing the last.
    let mut context = VersionVector::new();
    for seq in [1, 2, 3, 4, 5] {
        match sim.request(
            owner,
            store(seq, &format!("v{seq}"), context.clone()),
            5_000,
        ) {
            Ok(Response::Written { dot, .. }) => context.add(&dot),
            other => panic!("write {seq}: {other:?}"),
        }
    }
    // The owner crashes; its successor, which holds the key's state as a replica (and the
    // four newest write ids of the coordinator in it), owns the key now. Write 1 comes again,
    // as the coordinator's retry after a lost answer would.
    sim.run_for(2_000);
    sim.crash(owner);
    assert!(sim.settle(60_000));
    let owner = sim.owner_of(&key).expect("a live owner");
    match sim.request(owner, store(1, "v1", VersionVector::new()), 5_000) {
        Err(Error::Ambiguous(m)) => assert!(m.contains("read the key"), "{m}"),
        other => panic!("a late retry was not refused: {other:?}"),
    }
    let get = Request::Get {
        key: key.clone(),
        r: None,
        session: None,
    };
    match sim.request(owner, get, 5_000) {
        Ok(Response::Read(read)) => assert_eq!(read.values, [b"v5".to_vec()]),
        other => panic!("read: {other:?}"),
    }
}

/// Per-request quorums (`r`, `w`): an owner cut off from its replicas still acknowledges a
/// write asked for one copy, never one asked for three, and a quorum beyond N is refused.
#[test]
fn per_request_write_quorums_are_honoured_and_bounded_by_n() {
    let mut sim = Sim::new(SimOptions::default());
    sim.grow(5, 50);
    assert!(sim.run_until(60_000, |s| s.ring_errors(false).is_empty()));
    let key = b"quorum".to_vec();
    let owner = sim.owner_of(&key).expect("a live owner");
    let put = |w: Option<u8>, value: &[u8]| Request::Put {
        key: key.clone(),
        value: value.to_vec(),
        context: VersionVector::new(),
        w,
        session: None,
        mode: Default::default(),
    };
    let refused = sim.request(owner, put(Some(4), b"x"), 5_000);
    assert!(
        matches!(refused, Err(chordkv_node::Error::InvalidInput(_))),
        "{refused:?}"
    );
    // The owner can no longer reach any other node.
    let rest: Vec<usize> = (0..5).filter(|&i| i != owner).collect();
    sim.partition(&[owner], &rest);
    let one = sim.request(owner, put(Some(1), b"one copy"), 5_000);
    assert!(matches!(one, Ok(Response::Written { .. })), "{one:?}");
    let three = sim.request(owner, put(Some(3), b"three copies"), 20_000);
    assert!(
        three.is_err(),
        "acknowledged without its replicas: {three:?}"
    );
}

/// Hinted handoff (Dynamo §4.6): a write that could not reach one of its replicas is handed to
/// that replica when it answers again — here with anti-entropy switched off, so nothing else
/// could have brought it.
#[test]
fn a_write_missed_by_a_cut_off_replica_is_handed_over_when_it_returns() {
    let mut sim = Sim::new(SimOptions {
        node: Options {
            kv: kv::Options {
                sync_interval: u64::MAX / 4, // no anti-entropy: only the hint can repair
                ..kv::Options::default()
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    sim.grow(5, 50);
    assert!(sim.settle(60_000));
    let key = b"hinted".to_vec();
    let owner = sim.owner_of(&key).expect("a live owner");
    let ring = sim.true_ring();
    let at = ring
        .iter()
        .position(|n| n.addr == Sim::addr(owner))
        .expect("owner on the ring");
    let second = sim
        .index_of(ring[(at + 2) % ring.len()].addr)
        .expect("second replica");
    sim.partition(&[owner], &[second]);
    let put = Request::Put {
        key: key.clone(),
        value: b"v".to_vec(),
        context: VersionVector::new(),
        w: None,
        session: None,
        mode: Default::default(),
    };
    let acked = sim.request(owner, put, 10_000);
    assert!(matches!(acked, Ok(Response::Written { .. })), "{acked:?}");
    assert!(
        !sim.holders(&key).contains(&second),
        "the cut-off replica got it anyway"
    );
    sim.heal();
    assert!(
        sim.run_until(30_000, |s| s.holders(&key).contains(&second)),
        "the replica never received the write it missed"
    );
}

/// A plain read asks only the R − 1 replicas it needs; when one of them is out of reach it asks
/// the next one, so a crashed replica that nobody suspects yet costs the read nothing but a
/// refused connection.
#[test]
fn a_plain_read_whose_replica_crashed_asks_the_next_one() {
    let mut sim = Sim::new(SimOptions {
        seed: 5,
        ..SimOptions::default()
    });
    sim.grow(4, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let key = b"spare".to_vec();
    let put = Request::write(key.clone(), Some(b"v".to_vec()), VersionVector::new(), None);
    assert!(matches!(
        sim.request(0, put, 10_000),
        Ok(Response::Written { .. })
    ));
    assert!(
        sim.run_until(10_000, |s| s.holders(&key).len() == 3),
        "the key never reached its three copies"
    );
    let owner = sim.owner_of(&key).expect("an owner");
    let first = sim.preference_list(&key, 3)[1];
    sim.crash(first);
    // At once: the owner still counts the crashed node among its replicas. Asked as the owner
    // (`StoreGet`), so that no coordinator's retry hides a failed read.
    let get = Request::StoreGet {
        key: key.clone(),
        r: Some(2),
        session: None,
    };
    match sim.request(owner, get, 10_000) {
        Ok(Response::Read(r)) => assert_eq!(r.values, vec![b"v".to_vec()]),
        other => panic!("the read failed with a replica down and another up: {other:?}"),
    }
}
