//! Anti-entropy by hash trees between real `chordkv-node` processes: a replica that missed
//! writes is repaired with traffic that follows what it missed, not what the ring stores, and
//! copies in sync cost nothing but a root comparison per round.
//!
//! The traffic is what the askers report in their metrics: tree nodes compared
//! (`chordkv_sync_tree_nodes_total`), keys the replicas listed in the leaves that differ
//! (`chordkv_sync_keys_listed_total`) and states that travelled (`chordkv_sync_states_total`).
//! Nothing sleeps hoping for convergence; conditions are polled with deadlines.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{CONVERGE, Cluster, put_all, wait_until};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Anti-entropy every 200 ms, so a repair of thousands of keys takes seconds.
const FAST_SYNC: [&str; 2] = ["--sync-ms", "200"];

/// `n` distinct keys from `start`, each with its own value.
fn data(start: usize, n: usize) -> BTreeMap<String, Vec<u8>> {
    (start..start + n)
        .map(|i| (format!("ae-{i:06}"), format!("v{i}").into_bytes()))
        .collect()
}

/// Writes `data` through node `via` in slices, so no more than 500 requests are in
/// flight at once.
fn load(cluster: &Cluster, via: usize, data: &BTreeMap<String, Vec<u8>>) {
    let pairs: Vec<(String, Vec<u8>)> = data.clone().into_iter().collect();
    for chunk in pairs.chunks(500) {
        put_all(cluster, via, &chunk.iter().cloned().collect());
    }
}

/// The sum of metric `name` over the nodes `of`.
fn total_of(cluster: &Cluster, of: &[usize], name: &str) -> f64 {
    of.iter()
        .map(|&i| {
            cluster
                .metric(i, name)
                .unwrap_or_else(|e| panic!("metrics of node {i}: {e}"))
                .unwrap_or(0.0)
        })
        .sum()
}

/// The sum of metric `name` over every node.
fn total(cluster: &Cluster, name: &str) -> f64 {
    total_of(cluster, &cluster.all(), name)
}

/// Waits until every node stores `keys` keys (its own and its copies: with N = 3 on three
/// nodes, every key).
fn wait_for_keys(cluster: &Cluster, keys: u64) {
    wait_until(CONVERGE, &format!("every node storing {keys} keys"), || {
        let counts: Vec<u64> = cluster
            .all()
            .into_iter()
            .map(|i| cluster.status(i).map(|s| s.keys))
            .collect::<Result<_, _>>()?;
        if counts.iter().all(|&c| c == keys) {
            Ok(())
        } else {
            Err(format!("nodes store {counts:?}"))
        }
    });
}

/// A copy of a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("the copy's directory can be made");
    for entry in std::fs::read_dir(from).expect("the data directory can be read") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a data file can be copied");
        }
    }
}

#[test]
fn a_replica_missing_10k_keys_is_repaired_with_traffic_proportional_to_what_differs() {
    const STORED: usize = 30_000;
    const MISSED: usize = 10_000;
    let mut cluster = Cluster::start_with_metrics(3, &FAST_SYNC);
    let lagging = 2;
    load(&cluster, 0, &data(0, STORED));
    wait_for_keys(&cluster, STORED as u64);

    // The lagging node's data as it is now: killed (so sled's files are still), copied, and
    // started again on them.
    cluster.kill_node(lagging);
    let snapshot = cluster.data_dir(lagging).with_extension("snapshot");
    copy_dir(cluster.data_dir(lagging), &snapshot);
    cluster.restart_node(lagging, Some(0));
    cluster.wait_for_ring(&cluster.all());
    wait_for_keys(&cluster, STORED as u64);

    // Every node takes 10k more keys; then the lagging node goes back to the snapshot, which
    // lacks them (a disk restored from a backup, say).
    load(&cluster, 0, &data(STORED, MISSED));
    wait_for_keys(&cluster, (STORED + MISSED) as u64);
    cluster.kill_node(lagging);
    std::fs::remove_dir_all(cluster.data_dir(lagging)).expect("the data directory goes");
    copy_dir(&snapshot, cluster.data_dir(lagging));
    const TRAFFIC: [&str; 3] = [
        "chordkv_sync_keys_listed_total",
        "chordkv_sync_states_total",
        "chordkv_keys_handed_over_total",
    ];
    // The lagging node's counters start again from zero.
    let others = [0, 1];
    let before = TRAFFIC.map(|m| total_of(&cluster, &others, m));
    cluster.restart_node(lagging, Some(0));
    cluster.wait_for_ring(&cluster.all());
    wait_for_keys(&cluster, (STORED + MISSED) as u64);

    // The repair's traffic. The restarted node's own range may also come back by a hand-over
    // from the node that held it meanwhile (which sends that whole range); anti-entropy moves
    // the rest. Neither the keys listed nor the states moved come near the 40k stored.
    let after = TRAFFIC.map(|m| total(&cluster, m));
    let [listed, states, handed] = [0, 1, 2].map(|i| after[i] - before[i]);
    println!(
        "repair of {MISSED} missed keys among {}: {listed} keys listed, {states} states moved \
         by anti-entropy, {handed} keys handed over",
        STORED + MISSED
    );
    assert!(
        states <= 1.5 * MISSED as f64,
        "anti-entropy moved {states} states to repair {MISSED} missed keys"
    );
    assert!(
        listed <= 2.0 * MISSED as f64,
        "replicas listed {listed} keys to find {MISSED} missed ones among {}",
        STORED + MISSED
    );

    // In sync, a round compares roots and nothing else: no key is listed, no state moves.
    let quiet = |m| total(&cluster, m);
    let (listed0, states0) = (
        quiet("chordkv_sync_keys_listed_total"),
        quiet("chordkv_sync_states_total"),
    );
    let nodes0 = quiet("chordkv_sync_tree_nodes_total");
    std::thread::sleep(Duration::from_secs(2)); // ten sync intervals, to count what they do
    let rounds_nodes = quiet("chordkv_sync_tree_nodes_total") - nodes0;
    assert_eq!(
        (
            quiet("chordkv_sync_keys_listed_total") - listed0,
            quiet("chordkv_sync_states_total") - states0
        ),
        (0.0, 0.0),
        "copies in sync still exchanged keys or states"
    );
    // Three nodes, ten rounds of two seconds at 200 ms: about 30 root comparisons, with
    // slack for timer phase; a descent would compare hundreds of nodes.
    assert!(
        (1.0..=60.0).contains(&rounds_nodes),
        "{rounds_nodes} tree nodes compared in two seconds of rounds between copies in sync"
    );
}
