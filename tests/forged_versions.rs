//! Forged versions between real `chordkv-node` processes, through the real `kvctl` (issue 10): a
//! write context is the client's to send back, so a client can edit it. A context that gives
//! the key's owner a counter it never issued, near `u64::MAX`, used to make that counter the
//! owner's next dot and its persisted dot lease, after which every write the owner coordinated
//! overflowed, also after a restart. Now the owner refuses such a context with an error that
//! names the counter, and so a context that names another node above the ceiling of 2^48, and
//! writes through it go on (FORGED VERSIONS in `node/src/version/mod.rs`).

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{Cluster, assert_prints, stderr, wait_until};
use kvctl::{Context, Id, VersionVector};
use std::time::Duration;

/// The owner of `key` as `kvctl --json lookup` through node `via` reports it.
fn owner(cluster: &Cluster, via: usize, key: &str) -> usize {
    cluster.owner_of(via, key).unwrap_or_else(|e| panic!("{e}"))
}

/// Up to `n` keys that node `node` owns, found by looking candidates up through it.
fn keys_owned_by(cluster: &Cluster, node: usize, n: usize) -> Vec<String> {
    let keys: Vec<String> = (0..200)
        .map(|i| format!("owned-{i}"))
        .filter(|k| owner(cluster, node, k) == node)
        .take(n)
        .collect();
    assert!(!keys.is_empty(), "node {node} owns none of 200 keys");
    keys
}

/// The id of node `i`.
fn id(cluster: &Cluster, i: usize) -> Id {
    cluster.status(i).expect("the node answers").node.id
}

/// A context token naming `actor` at `counter`, as an edited `kvctl get` token would.
fn forged_token(actor: Id, counter: u64) -> String {
    Context::from([(actor, counter)].into_iter().collect::<VersionVector>()).to_token()
}

/// Puts `key = value` through node `via`, and reads it back through node `via`.
fn put_and_read(cluster: &Cluster, via: usize, key: &str, value: &str) {
    let out = cluster.kvctl(via, &["put", key, value]);
    assert!(
        out.status.success(),
        "put {key} through node {via} failed: {}",
        stderr(&out)
    );
    assert_prints(&cluster.kvctl(via, &["get", key]), value.as_bytes());
}

/// Asserts that a forged put was refused, with a message naming `counter`.
fn assert_refused(out: &std::process::Output, counter: u64, what: &str) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "a put with {what} was accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(&counter.to_string()) && err.contains("forged"),
        "a put with {what} was refused without saying why: {err}"
    );
}

#[test]
fn a_context_with_the_owners_counter_near_the_max_is_refused_and_writes_go_on_after_a_restart() {
    let mut cluster = Cluster::start(3);
    let victim = 1;
    let keys = keys_owned_by(&cluster, victim, 4);
    let target = &keys[0];
    put_and_read(&cluster, 0, target, "before");

    // Through node 0, which forwards to the owner: the official CLI is all it takes.
    let forged = u64::MAX - 1;
    let token = forged_token(id(&cluster, victim), forged);
    let out = cluster.kvctl(0, &["put", "--context", &token, target, "forged"]);
    assert_refused(&out, forged, "the owner's counter forged");

    // Every write the owner coordinates still works, through it and through another node.
    for (i, key) in keys.iter().enumerate() {
        put_and_read(&cluster, victim, key, &format!("after-{i}"));
        put_and_read(&cluster, 2, key, &format!("again-{i}"));
    }

    // And after a crash and a restart from its data directory (its dot lease is persisted).
    cluster.kill_node(victim);
    cluster.restart_node(victim, Some(0));
    cluster.wait_for_ring(&cluster.all());
    for (i, key) in keys.iter().enumerate() {
        let value = format!("restarted-{i}");
        wait_until(Duration::from_secs(30), "a write through the owner", || {
            let out = cluster.kvctl(victim, &["put", key, &value]);
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| stderr(&out))
        });
        assert_prints(&cluster.kvctl(0, &["get", key]), value.as_bytes());
    }
    let out = cluster.kvctl(victim, &["put", "--context", &token, target, "forged"]);
    assert_refused(
        &out,
        forged,
        "the owner's counter forged, after the restart",
    );
}

#[test]
fn a_context_with_another_nodes_counter_above_the_ceiling_is_refused() {
    let cluster = Cluster::start(3);
    let owner_node = 0;
    let other = 2;
    let keys = keys_owned_by(&cluster, owner_node, 1);
    let target = &keys[0];
    put_and_read(&cluster, 1, target, "before");

    // A counter planted for a node that is not the owner would reach that node as a replica,
    // and any node's counter that a later write through it would take.
    let forged = u64::MAX - 1;
    let token = forged_token(id(&cluster, other), forged);
    let out = cluster.kvctl(1, &["put", "--context", &token, target, "planted"]);
    assert_refused(&out, forged, "another node's counter forged");

    // Nothing was planted: the key's context names no such counter, and writes go on.
    let out = cluster.kvctl(1, &["--json", "get", target]);
    assert!(out.status.success(), "get: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("get prints JSON");
    let context = v["context"].as_str().expect("a context token");
    let context = VersionVector::from(Context::from_token(context).expect("a valid token"));
    assert!(
        context.iter().all(|(_, n)| n < 1 << 48),
        "the forged counter reached the key's context: {context:?}"
    );
    for via in cluster.all() {
        put_and_read(&cluster, via, target, &format!("after-{via}"));
    }
}
