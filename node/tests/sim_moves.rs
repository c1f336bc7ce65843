//! Keys moving between nodes on join and leave, with messages lost on the way, under a workload
//! of reads and writes — some with the context of a read, some blind (concurrent). Afterwards
//! every key's owner and its next N − 1 successors hold the same state, and the history checker
//! finds every acknowledged write in it, either surviving or superseded by a write that saw it
//! (no silent loss, no resurrected delete, no phantom). `CHORDKV_SEEDS=N` runs more seeds,
//! `CHORDKV_SEED_FROM` picks the first ([`run_seeds`]).

use chordkv_node::message::{Request, Response};
use chordkv_node::node::Options;
use chordkv_node::testing::history::History;
use chordkv_node::testing::seeds::run_seeds;
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::VersionVector;
use chordkv_node::{kv, ring};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One client operation through a random live node.
fn op(sim: &mut Sim, live: &[usize], history: &mut History, rng: &mut StdRng, seq: &mut u64) {
    // Let the ring move between client operations: joins, hand-overs, lost messages.
    sim.run_for(rng.random_range(0..300));
    let key = format!("k{}", rng.random_range(0..60)).into_bytes();
    let via = live[rng.random_range(0..live.len())];
    // Most writers read first and replace what they saw; some write blind, concurrently.
    let context = if rng.random_bool(0.7) {
        match sim.request(
            via,
            Request::Get {
                key: key.clone(),
                r: None,
                session: None,
            },
            20_000,
        ) {
            Ok(Response::Read(r)) => r.context,
            _ => return,
        }
    } else {
        VersionVector::new()
    };
    *seq += 1;
    let value = rng
        .random_bool(0.85)
        .then(|| format!("v{seq}").into_bytes());
    let id = history.record_write(&key, value.clone(), context.clone());
    let req = Request::write(key, value, context, None);
    if let Ok(Response::Written { dot, .. }) = sim.request(via, req, 20_000) {
        history.record_ack(id, dot);
    }
}

fn run(seed: u64) {
    let mut sim = Sim::new(SimOptions {
        seed,
        drop_rate: 0.03,
        node: Options {
            ring: ring::Options {
                successors: 4,
                ..ring::Options::default()
            },
            kv: kv::Options {
                // Collect tombstones once the ring is quiet. The grace period must outlast the
                // stray copies a move leaves behind (see `kv::Options::tombstone_grace`): a node
                // holding many foreign ranges reaches each once per cycle of foreign rounds, one
                // range every two sync intervals, and a leaver hands its strays to its successor.
                tombstone_grace: Some(30_000),
                ..kv::Options::default()
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut history = History::new();
    let mut seq = 0;
    sim.add_node(None);
    let mut live = vec![0usize];
    for _ in 0..40 {
        op(&mut sim, &live, &mut history, &mut rng, &mut seq);
    }
    for _ in 0..8 {
        live.push(sim.add_node(Some(0)));
        for _ in 0..10 {
            op(&mut sim, &live, &mut history, &mut rng, &mut seq);
        }
    }
    for _ in 0..2 {
        let i = live.remove(rng.random_range(1..live.len()));
        sim.leave(i);
        for _ in 0..10 {
            op(&mut sim, &live, &mut history, &mut rng, &mut seq);
        }
        assert!(
            sim.run_until(60_000, |s| !s.is_up(i)),
            "seed {seed}: n{i} did not finish leaving"
        );
    }
    sim.set_drop_rate(0.0);
    assert!(
        sim.settle(120_000),
        "seed {seed}: ring did not settle: {:?}",
        sim.ring_errors(false)
    );
    // Let anti-entropy bring every replica up to date, strays hand off and tombstones go: then
    // the owner and its next N - 1 successors all hold exactly the merge of every copy, nobody
    // else holds a copy (what a move left behind was handed off and collected), and that merge
    // accounts for every acknowledged write. Checked every 30 s for three minutes: a tombstone
    // that comes back from a stray after its collection takes another round or two to reach
    // every replica and go again.
    // Only convergence is waited for: a violation of the history fails at once.
    let mut verdict = Ok(());
    for _ in 0..6 {
        sim.run_for(30_000);
        verdict = sim.check_history(&mut history, 3);
        let converging = verdict.as_ref().is_err_and(|e| {
            let e = e.to_string();
            e.contains("has not converged") || e.contains("copies outside its preference list")
        });
        if !converging {
            break;
        }
    }
    if let Err(e) = verdict {
        panic!("seed {seed}: {e}");
    }
}

#[test]
fn moves_lose_no_acknowledged_write_under_message_loss() {
    run_seeds(12, run);
}

/// Seeds that once brought a deleted value back: 330 before the ring/data split (issue 13), 396
/// and 1891 after it (the split kept every output but ordered a tick's timers ring first, which
/// moved the failure to other seeds). In each, a stale stray copy of a deleted key was spread by
/// join hand-overs that gave newcomers every copy their successor held, and a copy reached the
/// owner after the tombstone was collected. A hand-over now gives a newcomer only its own range
/// (`sim_collect::a_newcomer_receives_only_the_keys_of_its_own_range` fails without that). Not
/// yet ruled out: a stray kept by the node that held it (a replica that left the key's
/// preference list before the delete) can still outlive the grace period; 5,000 seeds found two
/// such runs (issue 13's note).
#[test]
fn seeds_that_once_resurrected_a_delete_stay_deleted() {
    for seed in [330, 396, 1891] {
        run(seed);
    }
}

/// Blind writes of `v{i}` to each of `keys`, through nodes `0..via` in turn, recorded in
/// `history`; panics unless each is acknowledged.
fn put_all(sim: &mut Sim, history: &mut History, keys: &[Vec<u8>], via: usize) {
    for (i, key) in keys.iter().enumerate() {
        let value = format!("v{i}").into_bytes();
        let id = history.record_write(key, Some(value.clone()), VersionVector::new());
        let put = Request::write(key.clone(), Some(value), VersionVector::new(), None);
        match sim.request(i % via, put, 10_000) {
            Ok(Response::Written { dot, .. }) => history.record_ack(id, dot),
            other => panic!("put {i}: {other:?}"),
        }
    }
}

/// A node asked to leave while it hands a newcomer its range abandons that hand-over for the
/// leave's. The join round still in flight used to be answered into the leave's first round
/// (rounds named neither their receiver nor their number): here the leave's first round is
/// lost and the newcomer's acknowledgement arrives instead, so the leaver took its keys as
/// held by its successor, never sent them again, deleted them and left. With one copy of each
/// key nothing else held them.
#[test]
fn a_leave_during_a_join_hand_over_loses_nothing() {
    let mut sim = Sim::new(SimOptions {
        seed: 3,
        node: Options {
            kv: kv::Options {
                // Small rounds, so the hand-overs take several.
                transfer_batch: 4,
                ..kv::Options::with_replicas(1)
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    sim.grow(4, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let mut history = History::new();
    let keys: Vec<Vec<u8>> = (0..120).map(|i| format!("k{i}").into_bytes()).collect();
    put_all(&mut sim, &mut history, &keys, 4);
    let newcomer = sim.add_node(Some(0));
    let leaver = sim
        .true_successor(sim.node_ref(newcomer).id)
        .and_then(|s| sim.index_of(s.addr))
        .expect("a successor");
    assert!(
        sim.run_until(30_000, |s| {
            s.node(leaver).and_then(|n| n.kv().handing_over_to()) == Some(s.node_ref(newcomer))
        }),
        "the newcomer's successor never started its hand-over"
    );
    // The join round is on its way; the leave's first round will be lost.
    sim.lose_requests("transfer", true);
    sim.leave(leaver);
    sim.run_for(50);
    sim.lose_requests("transfer", false);
    assert!(
        sim.run_until(60_000, |s| !s.is_up(leaver)),
        "the leaver never left"
    );
    assert!(sim.settle(60_000), "the ring did not settle");
    sim.run_for(5_000);
    sim.check_history(&mut history, 1)
        .expect("nothing acknowledged is lost");
}

/// A leaving node that has sent its last hand-over round stores nothing more: a copy it took
/// then would leave with it, though the writer counted it towards W.
#[test]
fn a_node_that_has_handed_its_keys_over_refuses_copies() {
    let mut sim = Sim::new(SimOptions {
        seed: 4,
        ..SimOptions::default()
    });
    sim.grow(4, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let leaver = 2;
    sim.leave(leaver);
    assert!(
        sim.run_until(30_000, |s| s.node(leaver).is_some_and(|n| {
            n.ring().is_leaving() && n.kv().handing_over_to().is_none()
        })),
        "the leaver never finished its hand-over"
    );
    let state = chordkv_node::version::Versioned::empty();
    let replicate = Request::Replicate {
        items: vec![(b"late".to_vec(), state.encode())],
    };
    let token = sim.submit(leaver, replicate);
    let answer = sim.response(token);
    assert!(
        matches!(answer, Some(Err(chordkv_node::Error::Unavailable(_)))),
        "a copy offered after the last round: {answer:?}"
    );
}

/// When an owner crashes, its successor takes the dead node's range over without copying it:
/// the predecessor that notifies it lies outside the range it owned, so the hand-over before
/// the ring adopts it moves nothing, and the dead owner's keys are served from the copies the
/// successor already keeps as a replica. (Once the successor handed that predecessor its whole
/// range but what it kept, in rounds that each rescanned it: with a million keys, minutes
/// before the range was served again.)
#[test]
fn an_owner_crash_hands_its_range_over_without_copying_it() {
    let mut sim = Sim::new(SimOptions {
        seed: 6,
        record_events: true,
        ..SimOptions::default()
    });
    sim.grow(5, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let mut history = History::new();
    let keys: Vec<Vec<u8>> = (0..200).map(|i| format!("k{i}").into_bytes()).collect();
    put_all(&mut sim, &mut history, &keys, 5);
    assert!(
        sim.run_until(30_000, |s| keys.iter().all(|k| s.holders(k).len() == 3)),
        "three copies of every key"
    );
    let ring = sim.true_ring();
    let (pred, dead, succ) = (ring[0], ring[1], ring[2]);
    let (dead, succ) = (
        sim.index_of(dead.addr).expect("ours"),
        sim.index_of(succ.addr).expect("ours"),
    );
    let owned = keys
        .iter()
        .filter(|k| sim.owner_of(k) == Some(dead))
        .count();
    assert!(owned > 0, "the crashed node owns keys");
    sim.take_events();
    sim.crash(dead);
    assert!(sim.settle(60_000), "the ring did not close");
    let moved: Vec<u64> = sim
        .take_events()
        .into_iter()
        .filter(|(_, at, _)| *at == succ)
        .filter_map(|(_, _, e)| match e {
            chordkv_node::node::Event::Kv(kv::Event::TransferDone { to, keys }) if to == pred => {
                Some(keys)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        moved,
        [0],
        "the successor's hand-over to the dead node's predecessor (the dead node owned {owned} keys)"
    );
    // Anti-entropy then makes the third copies again.
    sim.run_for(20_000);
    sim.check_history(&mut history, 3)
        .expect("every acknowledged write is there");
}

/// A hand-over reads its range in slices of a few thousand entries, one per round, so no round
/// costs the size of the range; writes, overwrites and deletes that land behind the sweep while
/// it runs are sent afterwards, and the newcomer is adopted only once none is left. With one
/// copy of each key, nothing but the hand-over can bring the newcomer its keys.
#[test]
fn a_hand_over_larger_than_a_slice_misses_no_write_made_behind_its_sweep() {
    let mut sim = Sim::new(SimOptions {
        seed: 11,
        node: Options {
            kv: kv::Options {
                // Rounds as large as a slice: the slices, not the batches, cut the range.
                transfer_batch: 100_000,
                batch_bytes: 64 << 20,
                ..kv::Options::with_replicas(1)
            },
            ..Options::default()
        },
        ..SimOptions::default()
    });
    sim.grow(1, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let mut history = History::new();
    let keys: Vec<Vec<u8>> = (0..12_000).map(|i| format!("k{i}").into_bytes()).collect();
    put_all(&mut sim, &mut history, &keys, 1);
    let newcomer = sim.add_node(Some(0));
    assert!(
        sim.run_until(30_000, |s| {
            s.node(0).and_then(|n| n.kv().handing_over_to()) == Some(s.node_ref(newcomer))
        }),
        "the owner never started its hand-over"
    );
    // While it runs: overwrite with the read's context, delete, write new keys, all through
    // the owner, a little time apart so that they land at every stage of the sweep.
    let mut rng = StdRng::seed_from_u64(11);
    let mut writes = 0;
    while sim.node(0).and_then(|n| n.kv().handing_over_to()).is_some() && writes < 3_000 {
        writes += 1;
        if writes % 8 == 0 {
            sim.run_for(1);
        }
        let key = match rng.random_range(0..3) {
            0 => format!("new{writes}").into_bytes(),
            _ => keys[rng.random_range(0..keys.len())].clone(),
        };
        let context = match sim.request(
            0,
            Request::Get {
                key: key.clone(),
                r: None,
                session: None,
            },
            10_000,
        ) {
            Ok(Response::Read(r)) => r.context,
            other => panic!("read {key:?}: {other:?}"),
        };
        let value = rng
            .random_bool(0.7)
            .then(|| format!("w{writes}").into_bytes());
        let id = history.record_write(&key, value.clone(), context.clone());
        match sim.request(0, Request::write(key, value, context, None), 10_000) {
            Ok(Response::Written { dot, .. }) => history.record_ack(id, dot),
            Err(chordkv_node::Error::WrongOwner) => {}
            other => panic!("write {writes}: {other:?}"),
        }
    }
    assert!(writes > 10, "the hand-over ended before it met any write");
    assert!(sim.settle(60_000), "the ring did not settle");
    sim.check_history(&mut history, 1)
        .expect("nothing acknowledged is lost, nothing deleted comes back");
}
