//! Network partitions between real `chordkv-node` processes on loopback, made with the nodes'
//! test-only fault injection: a node started with `--allow-fault-injection` takes
//! [`Request::Block`] from a client and from then on silently drops every request it sends to the
//! peers named (an empty list heals). A partition between sides A and B is every node of A
//! blocking every node of B *and* every node of B blocking every node of A; client connections
//! are not affected, so the test still talks to every node and walks each side's ring.
//!
//! Each test is named after the claim it checks. Nothing sleeps hoping for convergence: the
//! split, the merge and readability are awaited by polling with a deadline
//! ([`common::wait_until`]). The figures printed along the way (run with `--nocapture`) are
//! observations from outside, upper bounds on what the nodes did; none is asserted as a bound.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use chordkv_node::message::Request;
use common::{CONVERGE, Cluster, wait_until};
use kvctl::{Client, Error, VersionVector, Written};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Flags for every node beyond the harness's fast timers (which probe neighbours every 200 ms):
/// fault injection on; a probe unanswered for half a second makes a neighbour suspected; a node
/// looks itself up through a node it lost every half second (the default is five), which is
/// what merges the rings after a heal; anti-entropy every quarter second (the default is one).
const FLAGS: [&str; 7] = [
    "--allow-fault-injection",
    "--heartbeat-timeout-ms",
    "500",
    "--merge-ms",
    "500",
    "--sync-ms",
    "250",
];

/// How long two rings may take to become one after a heal: generous, since a node retries the
/// nodes it lost in turn and a merge spreads by stabilization.
const MERGE: Duration = Duration::from_secs(60);

/// Keys and the values expected under them.
type Data = BTreeMap<String, Vec<u8>>;

/// Values of one key.
type Values = BTreeSet<Vec<u8>>;

/// Prints a line stamped with the time since `clock`, so a run's output is a timeline.
macro_rules! note {
    ($clock:expr, $($arg:tt)*) => {
        println!("[{:>8.2?}] {}", $clock.elapsed(), format_args!($($arg)*))
    };
}

/// The addresses of nodes `members`.
fn addrs(cluster: &Cluster, members: &[usize]) -> Vec<SocketAddr> {
    members.iter().map(|&i| cluster.addr(i)).collect()
}

/// Cuts `a` and `b` off from each other, both ways.
fn partition(cluster: &Cluster, a: &[usize], b: &[usize]) {
    for (side, other) in [(a, b), (b, a)] {
        for &i in side {
            cluster.block(i, addrs(cluster, other));
        }
    }
}

/// Lifts every block on every node.
fn heal(cluster: &Cluster) {
    for i in cluster.all() {
        cluster.block(i, Vec::new());
    }
}

/// `Ok` if the ring walked from *each* of `members` is converged with exactly them (see
/// [`Cluster::converged`]).
fn one_ring(cluster: &Cluster, members: &[usize]) -> Result<(), String> {
    for k in 0..members.len() {
        let mut from_k = members.to_vec();
        from_k.rotate_left(k);
        cluster.converged(&from_k)?;
    }
    Ok(())
}

/// `Ok` if `side` is a ring of its own: walked from each of its nodes it is converged with
/// exactly them, and no node of it still names a node outside it as predecessor or successor
/// (its failure detector suspected the other side).
fn isolated(cluster: &Cluster, side: &[usize]) -> Result<(), String> {
    let members: BTreeSet<SocketAddr> = addrs(cluster, side).into_iter().collect();
    for &i in side {
        let status = cluster.status(i)?;
        let strangers: Vec<SocketAddr> = status
            .pred
            .iter()
            .chain(&status.succs)
            .map(|n| n.addr)
            .filter(|a| !members.contains(a))
            .collect();
        if !strangers.is_empty() {
            return Err(format!(
                "node {i} still names {strangers:?} across the partition"
            ));
        }
    }
    one_ring(cluster, side)
}

/// What a key must read as.
#[derive(Clone, Debug)]
enum Want {
    /// No value.
    Absent,
    /// Exactly this one value.
    Exact(Vec<u8>),
    /// Concurrent versions: every value of `acked` as a sibling, and nothing beyond the values of
    /// `written` (the attempted writes, of which an unacknowledged one may have been stored).
    Siblings { acked: Values, written: Values },
}

impl Want {
    /// `Err` describing how `values`, the siblings read, fall short of this.
    fn check(&self, values: &[Vec<u8>]) -> Result<(), String> {
        let text = |vs: &[Vec<u8>]| -> Vec<String> {
            vs.iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        };
        let ok = match self {
            Want::Absent => values.is_empty(),
            Want::Exact(want) => values == std::slice::from_ref(want),
            Want::Siblings { acked, written } => {
                let read: BTreeSet<&Vec<u8>> = values.iter().collect();
                read.len() == values.len()
                    && acked.iter().all(|v| read.contains(v))
                    && read.iter().all(|v| written.contains(*v))
            }
        };
        if ok {
            return Ok(());
        }
        let want = match self {
            Want::Absent => "no value".to_string(),
            Want::Exact(v) => format!("exactly {:?}", text(std::slice::from_ref(v))),
            Want::Siblings { acked, written } => format!(
                "siblings with all of {:?} and nothing else but {:?}",
                text(&acked.iter().cloned().collect::<Vec<_>>()),
                text(&written.iter().cloned().collect::<Vec<_>>())
            ),
        };
        Err(format!("read {:?}, want {want}", text(values)))
    }
}

/// The keys of `expected` that do not read as expected through node `via` (all siblings, with
/// `read`), each with what was wrong. `Err` if node `via` cannot be reached at all.
fn misread(
    cluster: &Cluster,
    via: usize,
    expected: &BTreeMap<String, Want>,
) -> Result<BTreeMap<String, String>, String> {
    let client = cluster.client(via);
    Ok(cluster.block_on(async {
        let mut tasks = JoinSet::new();
        for (key, want) in expected.clone() {
            let client = client.clone();
            tasks.spawn(async move {
                let wrong = match client.read(key.as_bytes()).await {
                    Ok(read) => want.check(&read.values).err(),
                    Err(e) => Some(format!("read failed: {e}")),
                };
                wrong.map(|why| (key, why))
            });
        }
        let mut wrong = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            wrong.extend(done.expect("a read task does not panic"));
        }
        wrong
    }))
}

/// A blind write: `value` under `key`, through node `via`.
struct Attempt {
    via: usize,
    key: String,
    value: Vec<u8>,
}

/// Makes every write of `attempts` blind (the empty context: nothing read, nothing replaced),
/// one client per node, all in flight at once; returns each attempt with its outcome.
fn write_all(cluster: &Cluster, attempts: Vec<Attempt>) -> Vec<(Attempt, Result<Written, Error>)> {
    let vias: BTreeSet<usize> = attempts.iter().map(|a| a.via).collect();
    let clients: BTreeMap<usize, Client> =
        vias.into_iter().map(|i| (i, cluster.client(i))).collect();
    cluster.block_on(async {
        let mut tasks = JoinSet::new();
        for attempt in attempts {
            let client = clients[&attempt.via].clone();
            tasks.spawn(async move {
                let outcome = client
                    .write(
                        attempt.key.as_bytes(),
                        &attempt.value,
                        &VersionVector::new(),
                    )
                    .await;
                (attempt, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.expect("a write task does not panic"));
        }
        outcomes
    })
}

/// Unique keys written on each side of the partition.
const UNIQUE_PER_SIDE: usize = 40;

/// Keys written blind on both sides of the partition.
const SHARED: usize = 5;

/// Keys written before the partition.
const BEFORE: usize = 60;

/// The value side `name` writes under shared key `i`.
fn shared_value(i: usize, name: &str) -> Vec<u8> {
    format!("shared {i} from the {name} side").into_bytes()
}

#[test]
fn a_partition_with_writes_on_both_sides_heals_without_losing_acknowledged_writes() {
    let clock = Instant::now();
    let cluster = Cluster::start_with(5, &FLAGS);
    let all = cluster.all();
    let order = cluster.ring_order(&cluster.wait_for_ring(&all));
    // Two nodes that are not neighbours against the other three: each side's ring has to close
    // over gaps left by the other side.
    let small = vec![order[1], order[3]];
    let large = vec![order[0], order[2], order[4]];
    let sides: [&[usize]; 2] = [&small, &large];
    note!(
        clock,
        "ring order {order:?}: partition {small:?} | {large:?}"
    );

    let before: Data = (0..BEFORE)
        .map(|i| (format!("before-{i:03}"), format!("before {i}").into_bytes()))
        .collect();
    let outcomes = write_all(
        &cluster,
        before
            .iter()
            .enumerate()
            .map(|(n, (key, value))| Attempt {
                via: all[n % all.len()],
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("{}: {e}", a.key)))
        .collect();
    assert!(
        failed.is_empty(),
        "writes before the partition failed: {failed:?}"
    );

    let cut = Instant::now();
    partition(&cluster, &small, &large);
    wait_until(CONVERGE, "each side to be a ring of its own", || {
        isolated(&cluster, &small)?;
        isolated(&cluster, &large)
    });
    let detected = cut.elapsed();
    note!(
        clock,
        "split detected: each side a consistent ring of its own {detected:.2?} after the blocks"
    );

    // Unique keys on each side, and shared keys written blind on both, through every node of
    // the side in turn.
    let mut attempts = Vec::new();
    for (side, name) in sides.iter().zip(["small", "large"]) {
        let keys = (0..UNIQUE_PER_SIDE)
            .map(|i| (format!("{name}-{i:03}"), format!("{name} {i}").into_bytes()))
            .chain((0..SHARED).map(|i| (format!("shared-{i}"), shared_value(i, name))));
        for (n, (key, value)) in keys.enumerate() {
            attempts.push(Attempt {
                via: side[n % side.len()],
                key,
                value,
            });
        }
    }
    let outcomes = write_all(&cluster, attempts);

    // Every key with what it must read as, and the tallies per side (0: small, 1: large).
    let mut expected: BTreeMap<String, Want> = before
        .iter()
        .map(|(key, value)| (key.clone(), Want::Exact(value.clone())))
        .collect();
    let mut shared: BTreeMap<String, (Values, Values)> = BTreeMap::new();
    let mut acked = [0usize; 2];
    let mut failed: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (attempt, outcome) in outcomes {
        let side = usize::from(!small.contains(&attempt.via));
        if let Err(e) = &outcome {
            failed[side].push(format!("{} through node {}: {e}", attempt.key, attempt.via));
        } else {
            acked[side] += 1;
        }
        if attempt.key.starts_with("shared-") {
            let (acked, written) = shared.entry(attempt.key).or_default();
            if outcome.is_ok() {
                acked.insert(attempt.value.clone());
            }
            written.insert(attempt.value);
        } else if outcome.is_ok() {
            expected.insert(attempt.key, Want::Exact(attempt.value));
        }
    }
    expected.extend(
        shared
            .into_iter()
            .map(|(key, (acked, written))| (key, Want::Siblings { acked, written })),
    );
    let attempted = UNIQUE_PER_SIDE + SHARED;
    note!(
        clock,
        "while split: small side acknowledged {} of {attempted} writes, large side {} of \
         {attempted}; failed {:?} / {:?}",
        acked[0],
        acked[1],
        &failed[0][..failed[0].len().min(3)],
        &failed[1][..failed[1].len().min(3)],
    );
    // The small side holds two copies of every key; the default quorums shrink to them, so both
    // sides must take writes. A run without writes on both sides would check nothing.
    for (side, name) in ["small", "large"].into_iter().enumerate() {
        assert!(
            failed[side].is_empty(),
            "the {name} side refused writes while split: {:?}",
            failed[side]
        );
    }

    // A control: the sides really are cut off. Through each side a shared key reads as that
    // side's value alone, and the other side's unique keys are not there.
    for (side, name) in ["small", "large"].into_iter().enumerate() {
        let other = ["small", "large"][1 - side];
        let mut own: BTreeMap<String, Want> = (0..SHARED)
            .map(|i| (format!("shared-{i}"), Want::Exact(shared_value(i, name))))
            .collect();
        own.extend((0..5).map(|i| (format!("{other}-{i:03}"), Want::Absent)));
        for &i in sides[side] {
            let wrong = misread(&cluster, i, &own).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                wrong.is_empty(),
                "while split, through node {i} on the {name} side: {wrong:?}"
            );
        }
    }

    let healed = Instant::now();
    heal(&cluster);
    wait_until(MERGE, "one ring of all five nodes after the heal", || {
        one_ring(&cluster, &all)
    });
    let merged = healed.elapsed();
    note!(
        clock,
        "healed: one consistent ring of {} nodes, walked from each, {merged:.2?} after the heal",
        all.len()
    );

    // Only keys still wrong through a node need asking again there; every key is checked through
    // every node once more at the end.
    let mut pending: BTreeMap<usize, BTreeMap<String, Want>> =
        all.iter().map(|&i| (i, expected.clone())).collect();
    wait_until(
        CONVERGE,
        "every acknowledged write readable through every node",
        || {
            let mut sample = Vec::new();
            for (&i, keys) in pending.iter_mut() {
                let wrong = misread(&cluster, i, keys)?;
                keys.retain(|key, _| wrong.contains_key(key));
                sample.extend(wrong.into_iter().take(3).map(|w| (i, w)));
            }
            let left: usize = pending.values().map(BTreeMap::len).sum();
            match left {
                0 => Ok(()),
                _ => Err(format!("{left} reads still wrong, e.g. {sample:?}")),
            }
        },
    );
    let readable = healed.elapsed();
    for &i in &all {
        let wrong = misread(&cluster, i, &expected).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            wrong.is_empty(),
            "through node {i}, {} keys read wrong after they had read right, e.g. {:?}",
            wrong.len(),
            wrong.iter().take(5).collect::<Vec<_>>()
        );
    }
    note!(
        clock,
        "all {} keys ({BEFORE} from before the split, {} unique and {SHARED} shared written \
         while split) read as acknowledged through every node {readable:.2?} after the heal",
        expected.len(),
        2 * UNIQUE_PER_SIDE,
    );
}

#[test]
fn fault_injection_is_refused_unless_enabled() {
    // The harness starts nodes without --allow-fault-injection.
    let cluster = Cluster::start(3);
    let client = cluster.client(0);
    for peers in [addrs(&cluster, &[1, 2]), Vec::new()] {
        let refused = cluster.block_on(client.call(Request::Block {
            peers: peers.clone(),
        }));
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "Block {{ peers: {peers:?} }} answered {refused:?}"
        );
    }

    // The same connection still serves, and node 0 still reaches both peers: writes that need
    // all three copies succeed through it, and reads that merge all three see them.
    let strict = client.with_quorums(Some(3), Some(3));
    for i in 0..10 {
        let (key, value) = (format!("key-{i}"), format!("value {i}"));
        cluster
            .block_on(strict.write(key.as_bytes(), value.as_bytes(), &VersionVector::new()))
            .unwrap_or_else(|e| panic!("write {key} with W = 3 through node 0: {e}"));
        let read = cluster
            .block_on(strict.read(key.as_bytes()))
            .unwrap_or_else(|e| panic!("read {key} with R = 3 through node 0: {e}"));
        assert_eq!(read.values, [value.into_bytes()], "{key}");
    }
    cluster
        .converged(&cluster.all())
        .unwrap_or_else(|e| panic!("the ring after the refused blocks: {e}"));
}

#[test]
fn the_read_check_rejects_a_lost_sibling_a_stranger_a_duplicate_and_a_wrong_value() {
    let v = |s: &str| s.as_bytes().to_vec();
    let siblings = Want::Siblings {
        acked: [v("left"), v("right")].into(),
        written: [v("left"), v("right"), v("unacknowledged")].into(),
    };
    assert!(siblings.check(&[v("right"), v("left")]).is_ok());
    assert!(
        siblings
            .check(&[v("left"), v("unacknowledged"), v("right")])
            .is_ok()
    );
    assert!(siblings.check(&[v("left")]).is_err(), "a lost sibling");
    assert!(
        siblings
            .check(&[v("left"), v("right"), v("never")])
            .is_err(),
        "a value never written"
    );
    assert!(
        siblings.check(&[v("left"), v("right"), v("left")]).is_err(),
        "one write applied twice"
    );
    let exact = Want::Exact(v("one"));
    assert!(exact.check(&[v("one")]).is_ok());
    assert!(exact.check(&[]).is_err(), "lost");
    assert!(exact.check(&[v("two")]).is_err(), "a wrong value");
    assert!(exact.check(&[v("one"), v("one")]).is_err(), "applied twice");
    assert!(Want::Absent.check(&[]).is_ok());
    assert!(Want::Absent.check(&[v("one")]).is_err(), "a value");
}
