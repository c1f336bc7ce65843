//! Requests that change ownership or delete data, sent by a node whose view is stale, confused
//! or buggy (here: forged by the test, as such a node would send them), are checked against the
//! receiver's view of the ring and refused, with the receiver's state untouched: the ring stays
//! exact and every key keeps its copies. Each test names the request kind it forges; see
//! PLAUSIBILITY in the ring's and the data layer's essays.

use chordkv_node::Error;
use chordkv_node::id::{Id, in_open};
use chordkv_node::message::{NodeRef, Request, Response};
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::VersionVector;

const KEYS: usize = 40;

/// A settled ring of five with `KEYS` keys written, three copies each.
fn ring_with_keys(seed: u64) -> (Sim, Vec<Vec<u8>>) {
    let mut sim = Sim::new(SimOptions {
        seed,
        ..SimOptions::default()
    });
    sim.grow(5, 200);
    assert!(sim.settle(60_000), "the ring did not form");
    let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("k{i}").into_bytes()).collect();
    for k in &keys {
        let put = Request::write(k.clone(), Some(b"v".to_vec()), VersionVector::new(), None);
        let answer = sim.request(0, put, 20_000);
        assert!(matches!(answer, Ok(Response::Written { .. })), "{answer:?}");
    }
    sim.run_for(3_000);
    assert_copies(&sim, &keys);
    (sim, keys)
}

/// Every key is held, with a live value, by its owner and the next two nodes.
fn assert_copies(sim: &Sim, keys: &[Vec<u8>]) {
    for k in keys {
        for i in sim.preference_list(k, 3) {
            let state = sim.stored_state(i, k).expect("readable");
            assert!(
                !state.is_deleted(),
                "n{i} lost its copy of {}",
                String::from_utf8_lossy(k)
            );
        }
    }
}

fn refused(answer: &Result<Response, Error>) -> bool {
    matches!(answer, Err(Error::InvalidInput(m)) if m.starts_with("refused"))
}

fn refusals(sim: &Sim, i: usize, kind: &str) -> u64 {
    sim.node(i).map_or(0, |n| n.refusals().of(kind))
}

/// The reproduction from issue 10: `Transfer { deletes: [k] }` to every node deleted `k`
/// everywhere, acknowledged, with no tombstone. A join hand-over comes only from a successor
/// that has not adopted the receiver; a leave's deletes only from the receiver's predecessor.
#[test]
fn transfer_deletes_from_a_node_handing_nothing_over_are_refused_everywhere() {
    let (mut sim, keys) = ring_with_keys(11);
    for i in 0..sim.len() {
        let me = sim.node_ref(i);
        let ring = sim.node(i).expect("up").ring();
        // The most plausible senders there are: the successor (join), the predecessor (leave).
        let succ = ring.successor();
        let pred = ring.predecessor().expect("a predecessor");
        let join = Request::Transfer {
            from: succ,
            items: Vec::new(),
            deletes: keys.clone(),
            leaving: false,
        };
        let answer = sim.request(i, join, 1_000);
        assert!(
            refused(&answer),
            "n{i} took deletes from {succ}: {answer:?}"
        );
        // A node between our predecessor and us claiming to leave, with deletes.
        let between = NodeRef {
            id: Id::hash(b"between"),
            addr: Sim::addr(90),
        };
        if in_open(pred.id, me.id, between.id) {
            let leave = Request::Transfer {
                from: between,
                items: Vec::new(),
                deletes: keys.clone(),
                leaving: true,
            };
            let answer = sim.request(i, leave, 1_000);
            assert!(refused(&answer), "n{i} took leave deletes: {answer:?}");
        }
        assert!(refusals(&sim, i, "transfer") >= 1);
    }
    assert_copies(&sim, &keys);
    assert!(
        sim.ring_errors(false).is_empty(),
        "{:?}",
        sim.ring_errors(false)
    );
}

/// A join hand-over's keys lie in `(sender, receiver]`, and come from a successor.
#[test]
fn transfer_items_from_a_non_successor_or_outside_the_range_are_refused() {
    let (mut sim, keys) = ring_with_keys(12);
    let i = 1;
    let me = sim.node_ref(i);
    let stranger = (0..sim.len())
        .map(|j| sim.node_ref(j))
        .find(|n| {
            n.id != me.id
                && !sim
                    .node(i)
                    .expect("up")
                    .ring()
                    .successors()
                    .iter()
                    .any(|s| s.id == n.id)
        })
        .unwrap_or(NodeRef {
            id: Id::hash(b"stranger"),
            addr: Sim::addr(91),
        });
    let item = (
        b"planted".to_vec(),
        chordkv_node::version::Versioned::empty().encode(),
    );
    let answer = sim.request(
        i,
        Request::Transfer {
            from: stranger,
            items: vec![item],
            deletes: Vec::new(),
            leaving: false,
        },
        1_000,
    );
    assert!(refused(&answer), "{answer:?}");
    assert!(
        !sim.holders(b"planted").contains(&i),
        "a refused round stored its item"
    );
    assert_copies(&sim, &keys);
}

/// `Reap { commit: true }` deleted whatever state matched the digest. A commit is taken only
/// for a tombstone outside the receiver's range that an owner checked with it moments ago.
#[test]
fn reap_commits_of_live_values_or_unchecked_tombstones_are_refused() {
    let (mut sim, keys) = ring_with_keys(13);
    for k in &keys {
        let pref = sim.preference_list(k, 3);
        for &i in &pref {
            let digest = sim.stored_state(i, k).expect("readable").digest();
            let reap = Request::Reap {
                items: vec![(k.clone(), digest)],
                commit: true,
            };
            let answer = sim.request(i, reap, 1_000);
            assert!(refused(&answer), "n{i} reaped a live {k:?}: {answer:?}");
        }
    }
    assert!((0..sim.len()).any(|i| refusals(&sim, i, "reap") > 0));
    assert_copies(&sim, &keys);

    // A tombstone: a replica deletes it only after the owner's check of it.
    let k = keys[0].clone();
    let get = Request::Get {
        key: k.clone(),
        r: None,
        session: None,
    };
    let Ok(Response::Read(read)) = sim.request(0, get, 20_000) else {
        panic!("read failed");
    };
    let delete = Request::write(k.clone(), None, read.context, None);
    assert!(matches!(
        sim.request(0, delete, 20_000),
        Ok(Response::Written { .. })
    ));
    sim.run_for(3_000);
    let replica = sim.preference_list(&k, 3)[1];
    let digest = sim.stored_state(replica, &k).expect("readable").digest();
    let commit = Request::Reap {
        items: vec![(k.clone(), digest)],
        commit: true,
    };
    let answer = sim.request(replica, commit, 1_000);
    assert!(refused(&answer), "an unchecked commit: {answer:?}");
    assert!(sim.holders(&k).contains(&replica), "the tombstone went");
}

/// `Leaving` rewrote a node's successor list from anyone. Now it is taken only from the
/// predecessor or a successor, and a successor's leave keeps every node the receiver knew.
#[test]
fn leave_notices_from_strangers_are_refused_and_never_drop_known_successors() {
    let (mut sim, keys) = ring_with_keys(14);
    let i = 2;
    let before = sim.node(i).expect("up").ring().successors().to_vec();
    let pred = sim.node(i).expect("up").ring().predecessor();
    let stranger = NodeRef {
        id: Id::hash(b"stranger"),
        addr: Sim::addr(92),
    };
    let leave = Request::Leaving {
        node: stranger,
        pred: None,
        succs: vec![stranger],
    };
    let answer = sim.request(i, leave, 1_000);
    assert!(refused(&answer), "{answer:?}");
    let ring = sim.node(i).expect("up").ring();
    assert_eq!(ring.successors(), before.as_slice());
    assert_eq!(ring.predecessor(), pred);
    assert_eq!(refusals(&sim, i, "leaving"), 1);

    // Our second successor "leaves" naming only a far node: the first stays first.
    let second = before[1];
    let far = NodeRef {
        id: Id::hash(b"far"),
        addr: Sim::addr(93),
    };
    let leave = Request::Leaving {
        node: second,
        pred: Some(far),
        succs: vec![far],
    };
    assert!(matches!(sim.request(i, leave, 1_000), Ok(Response::Ack)));
    let ring = sim.node(i).expect("up").ring();
    assert_eq!(ring.successor(), before[0]);
    assert_eq!(
        ring.predecessor(),
        pred,
        "a successor's leave moved the range"
    );
    // Stabilization takes the live node back.
    sim.run_for(10_000);
    assert!(
        sim.ring_errors(false).is_empty(),
        "{:?}",
        sim.ring_errors(false)
    );
    assert_copies(&sim, &keys);
}

/// Repeated `FailureNotice`s about a live successor evicted it whenever one landed just after
/// an interval without news. Now a notice counts only once our own probe is overdue.
#[test]
fn repeated_failure_notices_about_a_live_neighbour_do_not_evict_it() {
    let (mut sim, keys) = ring_with_keys(15);
    let i = 3;
    let succ = sim.node(i).expect("up").ring().successor();
    for _ in 0..400 {
        let _ = sim.submit(i, Request::FailureNotice { dead: succ });
        sim.run_for(25);
        assert_eq!(
            sim.node(i).expect("up").ring().successor(),
            succ,
            "a live successor was dropped on another node's word"
        );
    }
    let me = sim.node_ref(i);
    let answer = sim.request(i, Request::FailureNotice { dead: me }, 1_000);
    assert!(refused(&answer), "{answer:?}");
    assert!(
        sim.ring_errors(false).is_empty(),
        "{:?}",
        sim.ring_errors(false)
    );
    assert_copies(&sim, &keys);
}

/// A `Notify` from a node between the predecessor and the receiver started a hand-over to
/// whatever address it gave, and one with nothing to move adopted it at once. Now the notifier
/// must answer a ping as itself first.
#[test]
fn a_notify_from_a_node_not_answering_as_itself_moves_nothing() {
    let (mut sim, keys) = ring_with_keys(16);
    for i in 0..sim.len() {
        let me = sim.node_ref(i);
        let pred = sim.node(i).expect("up").ring().predecessor().expect("pred");
        // An id just before ours: between our predecessor and us.
        let mut bytes = me.id.0;
        for b in bytes.iter_mut().rev() {
            let (v, borrow) = b.overflowing_sub(1);
            *b = v;
            if !borrow {
                break;
            }
        }
        let fake = Id(bytes);
        assert!(in_open(pred.id, me.id, fake));
        let other = sim.node_ref((i + 2) % sim.len());
        for addr in [Sim::addr(94), other.addr] {
            let notify = Request::Notify {
                node: NodeRef { id: fake, addr },
            };
            assert!(matches!(sim.request(i, notify, 1_000), Ok(Response::Ack)));
            sim.run_for(3_000);
            let node = sim.node(i).expect("up");
            assert_eq!(node.ring().predecessor(), Some(pred), "n{i} adopted a fake");
            assert!(node.kv().handing_over_to().is_none());
        }
        assert_eq!(refusals(&sim, i, "notify"), 1, "the borrowed address");
        let answer = sim.request(i, Request::Notify { node: me }, 1_000);
        assert!(refused(&answer), "{answer:?}");
    }
    assert!(
        sim.ring_errors(false).is_empty(),
        "{:?}",
        sim.ring_errors(false)
    );
    assert_copies(&sim, &keys);
}

/// `Adopted` to an installed node changes nothing, and one naming a range start after the
/// receiver is refused.
#[test]
fn adopted_claims_move_no_range() {
    let (mut sim, keys) = ring_with_keys(17);
    let i = 4;
    let pred = sim.node(i).expect("up").ring().predecessor();
    let succ = sim.node(i).expect("up").ring().successor();
    let answer = sim.request(i, Request::Adopted { pred: Some(succ) }, 1_000);
    assert!(matches!(answer, Ok(Response::Ack)), "{answer:?}");
    sim.run_for(2_000);
    assert_eq!(sim.node(i).expect("up").ring().predecessor(), pred);
    assert!(
        sim.ring_errors(false).is_empty(),
        "{:?}",
        sim.ring_errors(false)
    );
    assert_copies(&sim, &keys);
}
