//! Collection, in simulation: tombstones are removed once every replica has held the same one
//! for the grace period, and a key written again afterwards behaves like a new key, even for a
//! client that still holds a context from before the delete; a replica away for less than the
//! grace period cannot bring a deleted value back (and one away for longer does, the documented
//! limit); and a node never issues a dot counter twice, across restarts.

use chordkv_node::id::{Id, in_half_open};
use chordkv_node::message::{Request, Response};
use chordkv_node::node::Options;
use chordkv_node::testing::history::History;
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::{VersionVector, Versioned};
use chordkv_node::{kv, ring};

const NODES: usize = 6;
const GRACE: u64 = 3_000;

fn read(sim: &mut Sim, via: usize, key: &[u8]) -> (Vec<Vec<u8>>, VersionVector) {
    let get = Request::Get {
        key: key.to_vec(),
        r: None,
        session: None,
    };
    match sim.request(via, get, 15_000) {
        Ok(Response::Read(r)) => (r.values, r.context),
        other => panic!(
            "read of {:?} failed: {other:?}",
            String::from_utf8_lossy(key)
        ),
    }
}

/// Write (or delete, with `value: None`) through `via`, recording it in `h`; panics unless
/// acknowledged.
fn write(
    sim: &mut Sim,
    h: &mut History,
    via: usize,
    key: &[u8],
    value: Option<&str>,
    context: VersionVector,
) {
    let value = value.map(|v| v.as_bytes().to_vec());
    let id = h.record_write(key, value.clone(), context.clone());
    let req = Request::write(key.to_vec(), value, context, None);
    match sim.request(via, req, 15_000) {
        Ok(Response::Written { dot, .. }) => h.record_ack(id, dot),
        other => panic!("write failed: {other:?}"),
    }
}

/// A settled ring of [`NODES`] nodes that collect tombstones after `grace` ms.
fn ring(seed: u64, grace: u64) -> Sim {
    ring_with(
        seed,
        kv::Options {
            tombstone_grace: Some(grace),
            ..kv::Options::default()
        },
    )
}

/// A settled ring of [`NODES`] nodes with these data-layer options.
fn ring_with(seed: u64, kv: kv::Options) -> Sim {
    let mut sim = Sim::new(SimOptions {
        seed,
        node: Options {
            ring: ring::Options {
                successors: 4,
                ..ring::Options::default()
            },
            kv,
            ..Options::default()
        },
        ..SimOptions::default()
    });
    sim.grow(NODES, 200);
    assert!(sim.settle(60_000), "ring did not form");
    sim
}

#[test]
fn deleted_keys_are_collected_everywhere_and_can_be_written_again() {
    let mut sim = ring(7, GRACE);
    let mut h = History::new();
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("k{i}").into_bytes()).collect();
    for (i, key) in keys.iter().enumerate() {
        write(
            &mut sim,
            &mut h,
            i % NODES,
            key,
            Some(&format!("a{i}")),
            VersionVector::new(),
        );
    }
    // Delete half of them, each with the context of a read; keep those contexts.
    let mut stale = Vec::new();
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let (values, context) = read(&mut sim, (i + 1) % NODES, key);
        assert_eq!(values, vec![format!("a{i}").into_bytes()]);
        write(
            &mut sim,
            &mut h,
            (i + 2) % NODES,
            key,
            None,
            context.clone(),
        );
        stale.push((i, key.clone(), context));
    }
    let deleted: Vec<&Vec<u8>> = stale.iter().map(|(_, k, _)| k).collect();
    assert!(
        deleted.iter().all(|k| !sim.holders(k).is_empty()),
        "a tombstone was collected before its grace period"
    );

    // Grace, then collection rounds: no node holds a deleted key any more.
    sim.run_for(GRACE + 15_000);
    for key in &deleted {
        assert_eq!(
            sim.holders(key),
            Vec::<usize>::new(),
            "the tombstone of {:?} was not collected",
            String::from_utf8_lossy(key)
        );
    }
    if let Err(e) = sim.check_history(&mut h, 3) {
        panic!("after collection: {e}");
    }

    // Write the deleted keys again, blind, through another node; then write once more with the
    // context read before the delete. The new dot must be one that old context does not cover,
    // or the stale write would replace a value its writer never saw.
    for (i, key, context) in &stale {
        write(
            &mut sim,
            &mut h,
            (i + 3) % NODES,
            key,
            Some(&format!("b{i}")),
            VersionVector::new(),
        );
        write(
            &mut sim,
            &mut h,
            (i + 4) % NODES,
            key,
            Some(&format!("c{i}")),
            context.clone(),
        );
        let (mut values, _) = read(&mut sim, (i + 5) % NODES, key);
        values.sort();
        assert_eq!(
            values,
            vec![format!("b{i}").into_bytes(), format!("c{i}").into_bytes()],
            "{:?}: a write with a context from before the delete must not replace a later write",
            String::from_utf8_lossy(key)
        );
    }
    sim.run_for(10_000);
    if let Err(e) = sim.check_history(&mut h, 3) {
        panic!("after writing again: {e}");
    }
}

/// A replica holding `v1` crashes; the key is deleted while it is down; it comes back after
/// `downtime` ms on its old storage. Returns what the history checker says once the ring has
/// healed and collection has had its time.
fn replica_returns_after(downtime: u64) -> Result<(), String> {
    const GRACE: u64 = 10_000;
    let mut sim = ring(11, GRACE);
    let mut h = History::new();
    let key = b"doomed".to_vec();
    let via = sim.owner_of(&key).expect("an owner");
    write(
        &mut sim,
        &mut h,
        via,
        &key,
        Some("v1"),
        VersionVector::new(),
    );
    sim.run_for(2_000);
    let replica = sim.preference_list(&key, 3)[2];
    assert!(sim.holders(&key).contains(&replica));
    sim.crash(replica);
    assert!(sim.settle(60_000), "ring did not repair");
    let (_, context) = read(&mut sim, via, &key);
    write(&mut sim, &mut h, via, &key, None, context);
    sim.run_for(downtime);
    sim.restart(replica, Some(via));
    assert!(sim.settle(60_000), "ring did not heal");
    sim.run_for(GRACE + 20_000);
    sim.check_history(&mut h, 3).map_err(|e| e.to_string())
}

#[test]
fn a_replica_back_within_the_grace_period_cannot_bring_a_deleted_value_back() {
    if let Err(e) = replica_returns_after(1_000) {
        panic!("{e}");
    }
}

/// The documented limit of collection (`Options::tombstone_grace`): a node that was away for
/// longer than the grace period still holds a value whose tombstone is gone everywhere, and
/// brings it back. The history checker must see it.
#[test]
fn a_replica_back_after_the_grace_period_brings_the_deleted_value_back() {
    match replica_returns_after(40_000) {
        Err(e) => assert!(e.contains("came back after"), "unexpected failure: {e}"),
        Ok(()) => panic!("the value stayed deleted: then the grace period is not needed"),
    }
}

/// A node numbers its dots from its own counter, never from the floor a key's state carries
/// (another node's, or a forged one: FORGED VERSIONS in `src/version/mod.rs`), and never issues
/// a counter again after a restart: a key whose state it no longer holds could otherwise get a
/// dot again that old contexts cover.
#[test]
fn a_node_numbers_from_its_own_counter_and_never_issues_one_again_after_a_restart() {
    let mut sim = Sim::new(SimOptions {
        seed: 3,
        node: Options {
            kv: kv::Options::with_replicas(1),
            ..Options::default()
        },
        ..SimOptions::default()
    });
    let node = sim.add_node(None);
    assert!(sim.settle(10_000), "a lone node forms a ring");
    let mut h = History::new();
    // A state written through another node, numbered far above anything issued here.
    let mut theirs = Versioned::empty();
    theirs.raise_dot_floor(4_999_999);
    theirs.write(Id([7; 20]), &VersionVector::new(), Some(b"theirs".to_vec()));
    let replicate = Request::Replicate {
        items: vec![(b"busy".to_vec(), theirs.encode())],
    };
    assert!(matches!(
        sim.request(node, replicate, 5_000),
        Ok(Response::Ack)
    ));
    write(
        &mut sim,
        &mut h,
        node,
        b"busy",
        Some("mine"),
        VersionVector::new(),
    );
    let first = h.writes()[0].ack.expect("acknowledged").counter;
    assert_eq!(
        first, 1,
        "the first write of the node numbered from the key's floor"
    );

    sim.crash(node);
    sim.restart(node, None);
    assert!(sim.settle(10_000), "the node is back");
    write(
        &mut sim,
        &mut h,
        node,
        b"fresh",
        Some("new"),
        VersionVector::new(),
    );
    let next = h.writes()[1].ack.expect("acknowledged").counter;
    assert!(
        next > first,
        "after the restart a new key got counter {next}, not above {first} issued before"
    );
}

/// A join hand-over gives the newcomer the keys of its own range and nothing else. It used to
/// hand over every copy the successor held outside the range it kept (replicas of its
/// predecessors' keys, and any strays of older rings), and that multiplied stray copies: each
/// must reach its owner before a tombstone may be collected, and one that does not within the
/// grace period brings the deleted value back. That is how `sim_moves` seed 330 resurrected a
/// delete: the first node kept a stale stray of a key it had stopped replicating, handed it to
/// two newcomers in turn, and the second handed it to the owner just after the owner had
/// collected the key's tombstone. With anti-entropy off, only the hand-over moves data here.
#[test]
fn a_newcomer_receives_only_the_keys_of_its_own_range() {
    let mut sim = ring_with(
        5,
        kv::Options {
            sync_interval: u64::MAX / 4,
            ..kv::Options::default()
        },
    );
    let mut h = History::new();
    let keys: Vec<Vec<u8>> = (0..60).map(|i| format!("k{i}").into_bytes()).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = format!("v{i}");
        write(
            &mut sim,
            &mut h,
            i % NODES,
            key,
            Some(&value),
            VersionVector::new(),
        );
    }
    let newcomer = sim.add_node(Some(0));
    assert!(sim.settle(60_000), "the newcomer did not settle in");
    sim.run_for(2_000);
    let me = sim.node_ref(newcomer);
    let pred = sim
        .node(newcomer)
        .and_then(|n| n.ring().predecessor())
        .expect("the newcomer has a predecessor");
    assert!(sim.node(newcomer).is_some_and(|n| n.ring().is_installed()));
    let (mut own, mut other) = (0, Vec::new());
    for key in &keys {
        let mine = in_half_open(pred.id, me.id, Id::hash(key));
        let held = sim.holders(key).contains(&newcomer);
        assert!(
            held || !mine,
            "{:?} is in the newcomer's range and was not handed to it",
            String::from_utf8_lossy(key)
        );
        if held && mine {
            own += 1;
        }
        if held && !mine {
            other.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    assert!(
        own > 0,
        "no key fell in the newcomer's range: pick another seed"
    );
    assert_eq!(
        other,
        Vec::<String>::new(),
        "copies outside its range reached the newcomer"
    );
}

/// A replica pushed out of a key's preference list by a join keeps its copy as a stray until it
/// hands it to the owner. If that hand-off does not get through (here: every hand-off is lost)
/// and the key is deleted meanwhile, the tombstone must not be collected while the former
/// replica still holds the value it replaced: collected, the stray's eventual hand-off would
/// bring the value back. The owner asks its former replicas too, finds the old value there,
/// and sends them the tombstone; then collects it everywhere. (`sim_moves` seed 4155, at one
/// point of this code's history, resurrected a delete this way.)
#[test]
fn a_former_replica_holding_a_replaced_value_holds_up_collection_and_gets_the_tombstone() {
    let mut sim = ring(9, GRACE);
    let mut h = History::new();
    // The node about to join lands right after `owner` in the ring, so it becomes the second
    // copy of `owner`'s keys and pushes the third one, `former`, out of their preference list.
    let newcomer_id = Id::hash(Sim::addr(sim.len()).to_string().as_bytes());
    let owner = sim
        .true_successor(newcomer_id)
        .and_then(|succ| {
            let ring = sim.true_ring();
            let at = ring.iter().position(|n| *n == succ)?;
            sim.index_of(ring[(at + ring.len() - 1) % ring.len()].addr)
        })
        .expect("a ring");
    let key = (0..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| sim.owner_of(k) == Some(owner))
        .expect("some key is the owner's");
    write(
        &mut sim,
        &mut h,
        owner,
        &key,
        Some("old"),
        VersionVector::new(),
    );
    assert!(
        sim.run_until(20_000, |s| s.holders(&key).len() == 3),
        "three copies"
    );
    let former = sim.preference_list(&key, 3)[2];

    sim.lose_requests("handoff", true);
    let newcomer = sim.add_node(Some(0));
    assert!(sim.settle(60_000), "the newcomer did not settle in");
    assert_eq!(sim.preference_list(&key, 3)[..2], [owner, newcomer]);
    assert!(
        sim.holders(&key).contains(&former),
        "the former replica still holds its copy, now a stray"
    );
    let (_, context) = read(&mut sim, owner, &key);
    write(&mut sim, &mut h, owner, &key, None, context);

    // Several grace periods: the owner must not collect the tombstone while `former` holds
    // the old value, and must bring the tombstone there.
    sim.run_for(4 * GRACE);
    let at_former = sim.stored_state(former, &key).expect("a state");
    assert!(
        at_former.values().is_empty(),
        "the former replica still holds {:?}",
        at_former.values()
    );
    // Hand-offs get through again: nothing comes back, and the tombstone goes everywhere.
    sim.lose_requests("handoff", false);
    assert!(
        sim.run_until(10 * GRACE, |s| s.holders(&key).is_empty()),
        "the tombstone was not collected: held by {:?}",
        sim.holders(&key)
    );
    let (values, _) = read(&mut sim, newcomer, &key);
    assert!(values.is_empty(), "the deleted value came back: {values:?}");
    sim.check_history(&mut h, 3).expect("the history checks");
}
