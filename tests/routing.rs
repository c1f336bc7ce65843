//! Zero-hop routing ([`kvctl::route`]) between real `chordkv-node` processes: in a stable ring
//! nearly every request goes straight to its owner and every value reads back; while a node
//! joins and while one is killed, requests keep succeeding through the plain path and the
//! client's view of the ring recovers.
//!
//! The load runs on a runtime of its own, so the harness can start and kill nodes meanwhile.
//! Nothing sleeps hoping for convergence: conditions are polled with deadlines.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use common::{CLIENT_TIMEOUT, CONVERGE, Cluster, wait_until};
use kvctl::{Client, Error, RouteOptions, Session};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A routed client of node `i` whose view is refreshed only when a request finds it wrong
/// (the timer's period is longer than any test), so a view that recovers shows the fallback
/// path working.
async fn routed(addr: &str) -> Client {
    let options = RouteOptions {
        refresh_every: Duration::from_secs(600),
        ..RouteOptions::default()
    };
    Client::connect(addr, CLIENT_TIMEOUT)
        .await
        .expect("connect")
        .routed(options)
        .await
}

/// What a background load saw: the values acknowledged last per key, and the failures.
#[derive(Default)]
struct Outcome {
    acked: BTreeMap<String, Vec<u8>>,
    failures: Vec<(String, Error)>,
    ops: u64,
}

/// `workers` tasks writing fresh keys through `client` and reading back what they wrote,
/// until `stop`.
async fn load(client: Client, workers: usize, stop: Arc<AtomicBool>) -> Outcome {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let mut out = Outcome::default();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{w}-{}", i % 64);
                let value = format!("{w}-{i}").into_bytes();
                i += 1;
                out.ops += 1;
                match client.put(key.as_bytes(), &value).await {
                    Ok(_) => {
                        out.acked.insert(key.clone(), value.clone());
                    }
                    Err(e) => {
                        // Unknown outcome: the key may hold either value now.
                        out.acked.remove(&key);
                        out.failures.push((format!("put {key}"), e));
                        continue;
                    }
                }
                out.ops += 1;
                match client.get(key.as_bytes()).await {
                    Ok(Some(got)) if got == value => {}
                    Ok(got) => out
                        .failures
                        .push((format!("get {key}"), Error::InvalidData(format!("{got:?}")))),
                    Err(e) => out.failures.push((format!("get {key}"), e)),
                }
            }
            out
        });
    }
    let mut all = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        let done = done.expect("a load task does not panic");
        all.acked.extend(done.acked);
        all.failures.extend(done.failures);
        all.ops += done.ops;
    }
    all
}

/// Every acknowledged value reads back through a plain client.
fn assert_reads_back(cluster: &Cluster, via: usize, acked: &BTreeMap<String, Vec<u8>>) {
    let client = cluster.client(via);
    cluster.block_on(async {
        for (key, value) in acked {
            let got = client.get(key.as_bytes()).await.expect("read back");
            assert_eq!(got.as_deref(), Some(&value[..]), "key {key}");
        }
    });
}

#[test]
fn in_a_stable_ring_nearly_every_request_goes_straight_to_its_owner() {
    let cluster = Cluster::start(3);
    let addr = cluster.addr(0).to_string();
    let data: BTreeMap<String, Vec<u8>> = (0..300)
        .map(|i| (format!("key-{i}"), format!("value-{i}").into_bytes()))
        .collect();
    let stats = cluster.block_on(async {
        let client = routed(&addr).await;
        assert_eq!(client.route_view().map(|v| v.len()), Some(3));
        for (k, v) in &data {
            client.put(k.as_bytes(), v).await.expect("put");
        }
        for (k, v) in &data {
            let got = client.get(k.as_bytes()).await.expect("get");
            assert_eq!(got.as_deref(), Some(&v[..]), "key {k}");
        }
        // Deletes go direct too, and what they delete is gone.
        for k in data.keys().take(20) {
            assert!(client.delete(k.as_bytes()).await.expect("delete"));
            assert_eq!(client.get(k.as_bytes()).await.expect("get"), None);
        }
        client.route_stats().expect("a routed client counts")
    });
    // put = read + write, delete = read + remove, then a get: 300·2 + 300 + 20·3.
    assert_eq!(stats.total(), 960, "{stats:?}");
    assert!(stats.direct_share() >= 0.99, "{stats:?}");
    // The other nodes saw the reads and writes too: through a plain client, all there.
    let rest: BTreeMap<String, Vec<u8>> = data.into_iter().skip(20).collect();
    assert_reads_back(&cluster, 2, &rest);
}

#[test]
fn a_routed_session_keeps_its_guarantees_across_plain_clients() {
    // Reads and writes alternate between a routed client of node 0 and a plain client of node
    // 2 in one session: each read returns the session's last write, and the session ends
    // holding the same floors whichever way the requests went.
    let cluster = Cluster::start(3);
    let (a0, a2) = (cluster.addr(0).to_string(), cluster.addr(2).to_string());
    cluster.block_on(async {
        let direct = routed(&a0).await.with_session(Session::new());
        let plain = Client::connect(&a2, CLIENT_TIMEOUT)
            .await
            .expect("connect")
            .sharing_session(&direct);
        for i in 0..40 {
            let key = format!("s-{}", i % 8);
            let value = format!("v{i}").into_bytes();
            let (writer, reader) = if i % 2 == 0 {
                (&direct, &plain)
            } else {
                (&plain, &direct)
            };
            writer.put(key.as_bytes(), &value).await.expect("put");
            let got = reader.get(key.as_bytes()).await.expect("get");
            assert_eq!(got.as_deref(), Some(&value[..]), "{key} after write {i}");
        }
        let session = direct.session().expect("in a session");
        assert_eq!(session.iter().count(), 8);
        let stats = direct.route_stats().expect("routed");
        assert!(stats.direct_share() >= 0.99, "{stats:?}");
    });
}

/// Waits until `client` has sent `n` more requests; returns its counts from before them.
fn wait_for_more_requests(client: &Client, n: u64) -> kvctl::RouteStats {
    let before = client.route_stats().expect("routed");
    wait_until(CONVERGE, &format!("{n} more requests"), || {
        let now = client.route_stats().expect("routed");
        match now.total() - before.total() {
            done if done >= n => Ok(()),
            done => Err(format!("{done} so far")),
        }
    });
    before
}

/// Waits until the ring has settled for `client`: fifty requests in a row went direct.
fn wait_for_direct_streak(client: &Client) {
    let mut window = client.route_stats().expect("routed");
    wait_until(CONVERGE, "fifty requests in a row sent direct", || {
        let now = client.route_stats().expect("routed");
        let since = now.since(&window);
        if since.total() < 50 {
            return Err(format!("{} so far", since.total()));
        }
        window = now;
        if since.direct == since.total() {
            Ok(())
        } else {
            Err(format!("not all direct yet: {since:?}"))
        }
    });
}

#[test]
fn requests_keep_succeeding_while_a_node_joins_and_the_view_recovers() {
    let mut cluster = Cluster::start(3);
    let addr = cluster.addr(0).to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(routed(&addr));
    let stop = Arc::new(AtomicBool::new(false));
    let running = runtime.spawn(load(client.clone(), 8, Arc::clone(&stop)));

    let joined = cluster.start_node(Some(0), &[]);
    cluster.wait_for_ring(&[0, 1, 2, joined]);
    // The view learns the newcomer from a request that found it wrong (the timer is off).
    wait_until(
        CONVERGE,
        "the client's view to hold 4 nodes",
        || match client.route_view().map(|v| v.len()) {
            Some(4) => Ok(()),
            other => Err(format!(
                "view of {other:?} nodes, {:?}",
                client.route_stats()
            )),
        },
    );
    // The view may hold the newcomer before its predecessor's hand-over to it is done (the
    // newcomer answers `WrongOwner` until then).
    wait_for_direct_streak(&client);
    // Once the view holds the newcomer, requests go direct again.
    let before = wait_for_more_requests(&client, 200);
    stop.store(true, Ordering::Relaxed);
    let outcome = runtime.block_on(running).expect("load");
    let after = client.route_stats().expect("routed").since(&before);

    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert!(outcome.ops > 0);
    let stats = client.route_stats().expect("routed");
    assert!(
        stats.fallback_wrong_owner + stats.forwarded > 0,
        "the newcomer's keys were first sent to their old owner: {stats:?}"
    );
    assert!(
        after.direct_share() >= 0.99,
        "after the view recovered: {after:?}"
    );
    assert_reads_back(&cluster, joined, &outcome.acked);
}

#[test]
fn requests_keep_succeeding_while_a_node_is_killed_and_the_view_recovers() {
    let mut cluster = Cluster::start(3);
    let addr = cluster.addr(0).to_string();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(routed(&addr));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = 8;
    let running = runtime.spawn(load(client.clone(), workers, Arc::clone(&stop)));
    wait_until(CONVERGE, "some load before the kill", || {
        match client.route_stats().expect("routed").direct {
            n if n >= 100 => Ok(()),
            n => Err(format!("{n} direct so far")),
        }
    });

    cluster.kill_node(1);
    wait_until(
        CONVERGE,
        "the client's view to drop the dead node",
        || match client.route_view().map(|v| v.len()) {
            Some(2) => Ok(()),
            other => Err(format!(
                "view of {other:?} nodes, {:?}",
                client.route_stats()
            )),
        },
    );
    cluster.wait_for_ring(&[0, 2]);
    wait_for_direct_streak(&client);
    let before = wait_for_more_requests(&client, 200);
    stop.store(true, Ordering::Relaxed);
    let outcome = runtime.block_on(running).expect("load");
    let after = client.route_stats().expect("routed").since(&before);
    let stats = client.route_stats().expect("routed");

    // The only failures are writes that were in flight to the killed node: their outcome is
    // unknown, so they are reported, not resent (at most one per worker).
    let in_doubt = outcome
        .failures
        .iter()
        .filter(|(what, e)| {
            what.starts_with("put") && matches!(e, Error::Unreachable(_) | Error::Timeout(_))
        })
        .count();
    assert_eq!(in_doubt, outcome.failures.len(), "{:?}", outcome.failures);
    assert_eq!(in_doubt as u64, stats.write_in_doubt, "{stats:?}");
    assert!(in_doubt <= workers, "{:?}", outcome.failures);
    assert!(
        stats.fallbacks() > 0,
        "the dead node's keys fell back: {stats:?}"
    );
    assert!(
        after.direct_share() >= 0.99,
        "after the view recovered: {after:?}"
    );
    assert_reads_back(&cluster, 2, &outcome.acked);
}

#[test]
fn kvctl_direct_reads_and_writes_through_the_owner() {
    let cluster = Cluster::start(3);
    let put = cluster.kvctl(1, &["--direct", "put", "greeting", "hello"]);
    assert!(put.status.success(), "{}", common::stderr(&put));
    let get = cluster.kvctl(2, &["--direct", "get", "greeting"]);
    common::assert_prints(&get, b"hello");
    let delete = cluster.kvctl(0, &["--direct", "delete", "greeting"]);
    assert!(delete.status.success(), "{}", common::stderr(&delete));
    let gone = cluster.kvctl(0, &["--direct", "get", "greeting"]);
    assert_eq!(gone.status.code(), Some(1), "{}", common::stderr(&gone));
}
