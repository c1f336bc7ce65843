//! Replication under crashes: real `chordkv-node` processes on loopback, killed with SIGKILL, with
//! the default N = 3 copies of every key, W = 2 and R = 2.
//!
//! Each test is named after the claim it checks. Nothing sleeps hoping for convergence: ring
//! repair, re-replication and readability are awaited by polling with a deadline
//! ([`common::wait_until`]). The figures printed along the way (run with `--nocapture`) are
//! observations from outside, upper bounds on what the nodes did, except the detection times,
//! which the nodes' failure detectors report in their metrics; none is asserted as a bound.
//!
//! These tests crash processes; partitions between real processes (through the nodes' fault
//! injection) are in `tests/partition.rs`, and in simulation in `node/tests/sim_chaos.rs`.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use chordkv_node::id::in_half_open;
use chordkv_node::message::{Request, Response};
use chordkv_node::version::Versioned;
use chordkv_node::wire::{Dialer, Limits, Role};
use common::{CLIENT_TIMEOUT, CONVERGE, Cluster, put_all, wait_until};
use kvctl::{Client, Error, Id, VersionVector};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Copies of every key (the nodes' default `--replicas`).
const N: usize = 3;

/// Flags for every node beyond the harness's fast timers: a probe unanswered for half a second
/// makes a neighbour suspected (the harness already probes every 200 ms). A SIGKILLed process
/// refuses connections, which is suspected at once; the timeout matters for what is in flight.
const DETECTOR: [&str; 2] = ["--heartbeat-timeout-ms", "500"];

/// Keys and the values expected under them.
type Data = BTreeMap<String, Vec<u8>>;

/// `n` distinct keys with distinct values.
fn data(n: usize) -> Data {
    (0..n)
        .map(|i| (format!("key-{i:04}"), format!("value-{i}").into_bytes()))
        .collect()
}

/// `members` without `gone`.
fn without(members: &[usize], gone: &[usize]) -> Vec<usize> {
    members
        .iter()
        .copied()
        .filter(|i| !gone.contains(i))
        .collect()
}

/// The copies of keys of `data` that a node of their preference list does not hold yet, in the ring converged with exactly `members`: a key's preference list is its owner (the
/// first node at or after the key's id) and the owner's next N − 1 successors. Every copy is
/// asked for directly (`ReplicaRead`), so this sees what the nodes store, not what a quorum read
/// merges. `Err` if the ring is not converged or a node cannot be asked.
fn under_replicated(
    cluster: &Cluster,
    members: &[usize],
    data: &Data,
) -> Result<Vec<(String, SocketAddr)>, String> {
    let view = cluster.converged(members)?;
    let mut ring: Vec<(Id, SocketAddr)> = view
        .nodes
        .iter()
        .map(|m| (m.node().id, m.node().addr))
        .collect();
    ring.sort();
    let copies = N.min(ring.len());
    cluster.block_on(async {
        let mut clients = BTreeMap::new();
        for &(_, addr) in &ring {
            // Replica reads are node-to-node requests; these open nodes take anyone who says so.
            let as_node = Dialer::open(Role::Node, Limits::client());
            let client = Client::connect_with(&addr.to_string(), as_node, CLIENT_TIMEOUT)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            clients.insert(addr, client);
        }
        let mut tasks = JoinSet::new();
        for (key, want) in data.clone() {
            let id = Id::hash(key.as_bytes());
            let owner = ring.partition_point(|&(node, _)| node < id) % ring.len();
            for k in 0..copies {
                let addr = ring[(owner + k) % ring.len()].1;
                let client = clients[&addr].clone();
                let (key, want) = (key.clone(), want.clone());
                tasks.spawn(async move {
                    let req = Request::ReplicaRead {
                        key: key.clone().into_bytes(),
                    };
                    let held = match client.call(req).await {
                        Ok(Response::State(Some(bytes))) => Versioned::decode(&bytes)
                            .map(|v| v.values().contains(&want.as_slice()))
                            .unwrap_or(false),
                        _ => false,
                    };
                    (!held).then_some((key, addr))
                });
            }
        }
        let mut missing = Vec::new();
        while let Some(done) = tasks.join_next().await {
            missing.extend(done.expect("a replica read task does not panic"));
        }
        missing.sort();
        Ok(missing)
    })
}

/// Waits until every key of `data` has all its copies on its preference list in the ring
/// converged with `members` (see [`under_replicated`]); returns how long that took.
fn wait_for_full_replication(cluster: &Cluster, members: &[usize], data: &Data) -> Duration {
    wait_for_full_replication_within(cluster, members, data, CONVERGE)
}

/// [`wait_for_full_replication`], failing after `bound`.
fn wait_for_full_replication_within(
    cluster: &Cluster,
    members: &[usize],
    data: &Data,
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    let mut pending = data.clone();
    let what = format!("{N} copies of {} keys on nodes {members:?}", data.len());
    wait_until(bound, &what, || {
        let missing = under_replicated(cluster, members, &pending)?;
        // Only keys still missing a copy need asking again.
        let keys: BTreeSet<&String> = missing.iter().map(|(key, _)| key).collect();
        pending.retain(|key, _| keys.contains(key));
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} copies of {} keys missing, e.g. {:?}",
                missing.len(),
                pending.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    });
    started.elapsed()
}

/// Waits until the ring converged with `members` stores exactly `N` copies of every key and no
/// more: the copies the nodes store add up to `N` times the keys they own (each key is owned
/// once), so no key lacks a copy without another having a stray one. (Every key of the ring,
/// not only some test data, and every copy, as the nodes count them.) Returns
/// how many keys the ring holds. With `keys`, also waits for exactly that many keys.
fn wait_for_exact_placement(cluster: &Cluster, members: &[usize], keys: Option<u64>) -> u64 {
    let mut held = 0;
    let what = format!("exactly {N} copies of every key on nodes {members:?}");
    wait_until(CONVERGE, &what, || {
        let view = cluster.converged(members)?;
        let statuses: Vec<_> = view.nodes.iter().filter_map(|m| m.status()).collect();
        let owned: u64 = statuses.iter().map(|s| s.owned).sum();
        let stored: u64 = statuses.iter().map(|s| s.keys).sum();
        held = owned;
        if stored == N as u64 * owned && keys.is_none_or(|k| k == owned) {
            Ok(())
        } else {
            Err(format!("{stored} copies stored of {owned} keys"))
        }
    });
    held
}

/// Kills node `victim` and waits until the ring has converged without it; returns how long
/// until no ring walk from a survivor lists it any more, and how long until the ring was
/// converged (consistent, exactly `survivors`).
fn kill_and_wait(
    cluster: &mut Cluster,
    victim: usize,
    survivors: &[usize],
) -> (Duration, Duration) {
    let killed = Instant::now();
    cluster.kill_node(victim);
    let gone_addr = cluster.addr(victim);
    let mut gone = None;
    wait_until(CONVERGE, &format!("the ring without node {victim}"), || {
        let view = cluster.ring(survivors[0])?;
        if gone.is_none() && view.nodes.iter().all(|m| m.node().addr != gone_addr) {
            gone = Some(killed.elapsed());
        }
        cluster.converged(survivors).map(|_| ())
    });
    let converged = killed.elapsed();
    (gone.unwrap_or(converged), converged)
}

/// Each of `members`' failure-detector totals so far: the sum and count of its
/// `chordkv_detection_ms` samples (time from a neighbour's last answer to its suspicion).
type Detections = BTreeMap<usize, (f64, f64)>;

fn detector_totals(cluster: &Cluster, members: &[usize]) -> Result<Detections, String> {
    let mut totals = BTreeMap::new();
    for &i in members {
        let sum = cluster
            .metric(i, "chordkv_detection_ms_sum")?
            .unwrap_or(0.0);
        let count = cluster
            .metric(i, "chordkv_detection_ms_count")?
            .unwrap_or(0.0);
        totals.insert(i, (sum, count));
    }
    Ok(totals)
}

/// What the failure detectors of `members` measured since `before`, from their metrics:
/// waits until at least one of them suspected a neighbour by its own heartbeats (the others
/// may have learnt of it from a failure notice), then gives each one's mean detection time.
fn detections(cluster: &Cluster, members: &[usize], before: &Detections) -> String {
    let mut seen = Vec::new();
    wait_until(CONVERGE, "a failure detector to report a crash", || {
        seen.clear();
        for (i, (sum, count)) in detector_totals(cluster, members)? {
            let (sum0, count0) = before.get(&i).copied().unwrap_or_default();
            if count > count0 {
                seen.push(format!(
                    "node {i} after {:.0} ms",
                    (sum - sum0) / (count - count0)
                ));
            }
        }
        if seen.is_empty() {
            Err("no detector has reported a suspicion".into())
        } else {
            Ok(())
        }
    });
    format!(
        "its neighbours' heartbeats detected it ({})",
        seen.join(", ")
    )
}

/// Most writes the load makes in all: a bound, normally not reached before the test stops it.
const MAX_WRITES: usize = 20_000;

/// Each writer starts at most one write per this interval.
const WRITE_PACE: Duration = Duration::from_millis(10);

/// Writers per entry node.
const WRITERS_PER_NODE: usize = 2;

/// A write that did not return `Ok`: its outcome is unknown (it may or may not be stored).
struct Failed {
    key: String,
    value: Vec<u8>,
    error: Error,
}

/// A write load on its own runtime: writers that each make blind writes of fresh keys `w-{n}`
/// (the empty context: nothing to read first, nothing to replace) through one entry node, and
/// record which were acknowledged.
struct Load {
    runtime: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Data>>,
    writers: Vec<tokio::task::JoinHandle<Vec<Failed>>>,
}

impl Load {
    /// Starts [`WRITERS_PER_NODE`] writers through each of `entries`.
    fn start(cluster: &Cluster, entries: &[usize]) -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the write load");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Data::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for &entry in entries {
            let addr = cluster.addr(entry).to_string();
            for _ in 0..WRITERS_PER_NODE {
                let client = runtime
                    .block_on(Client::connect(&addr, CLIENT_TIMEOUT))
                    .unwrap_or_else(|e| panic!("cannot connect to node {entry}: {e}"));
                let (stop, acked, next) = (stop.clone(), acked.clone(), next.clone());
                writers.push(runtime.spawn(write_until_stopped(client, stop, acked, next)));
            }
        }
        Load {
            runtime,
            stop,
            acked,
            writers,
        }
    }

    /// How many writes were acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.lock().expect("no writer panicked").len()
    }

    /// A copy of the acknowledged writes so far.
    fn acked_so_far(&self) -> Data {
        self.acked.lock().expect("no writer panicked").clone()
    }

    /// Waits until `more` further writes were acknowledged after `since` were: the load is
    /// being served.
    fn wait_for_progress(&self, since: usize, more: usize, what: &str) {
        wait_until(CONVERGE, what, || match self.acked() {
            n if n >= since + more => Ok(()),
            n => Err(format!("{} writes acknowledged since", n - since)),
        });
    }

    /// Stops the writers and returns the acknowledged writes and the failed ones.
    fn stop(self) -> (Data, Vec<Failed>) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.runtime.block_on(async {
            let mut failed = Vec::new();
            for writer in self.writers {
                failed.extend(writer.await.expect("a writer does not panic"));
            }
            failed
        });
        let acked = self.acked.lock().expect("no writer panicked").clone();
        (acked, failed)
    }
}

/// One writer: blind writes of fresh keys, paced, until `stop` is set or [`MAX_WRITES`] keys
/// were handed out. Returns the writes that failed.
async fn write_until_stopped(
    client: Client,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Data>>,
    next: Arc<AtomicUsize>,
) -> Vec<Failed> {
    let mut failed = Vec::new();
    let mut pace = tokio::time::interval(WRITE_PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pace.tick().await;
        if stop.load(Ordering::Relaxed) {
            return failed;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_WRITES {
            return failed;
        }
        let key = format!("w-{n}");
        let value = format!("value of w-{n}").into_bytes();
        match client
            .write(key.as_bytes(), &value, &VersionVector::new())
            .await
        {
            Ok(_) => {
                acked.lock().expect("no writer panicked").insert(key, value);
            }
            Err(error) => failed.push(Failed { key, value, error }),
        }
    }
}

/// How the acknowledged writes read back through one node.
#[derive(Default)]
struct Audit {
    /// Keys read back as exactly their one value.
    exact: usize,
    /// Keys read back as several siblings that all hold the written value: one write applied
    /// twice (see [`retried_write_is_applied_once_even_if_the_first_owner_crashed`]). Nothing
    /// is lost, but `get` refuses such a key until a client resolves it.
    duplicated: Vec<String>,
    /// Keys whose value is not among the values read (or is, beside values never written to
    /// them): lost writes.
    lost: Vec<String>,
    /// Keys whose read failed.
    failed: Vec<String>,
}

impl Audit {
    /// `Ok` if no key was lost and no read failed; else a sample of what went wrong.
    fn nothing_lost(&self, via: usize, total: usize) -> Result<(), String> {
        if self.lost.is_empty() && self.failed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "through node {via}, {} of {total} acknowledged writes lost and {} reads failed, \
             e.g. {:?} {:?}",
            self.lost.len(),
            self.failed.len(),
            &self.lost[..self.lost.len().min(5)],
            &self.failed[..self.failed.len().min(5)]
        ))
    }
}

/// Reads every key of `data` through node `via` with `read`, which returns all siblings, and
/// sorts the keys by outcome. `Err` if node `via` cannot be reached at all.
fn audit(cluster: &Cluster, via: usize, data: &Data) -> Result<Audit, String> {
    let addr = cluster.addr(via).to_string();
    cluster.block_on(async {
        let client = Client::connect(&addr, CLIENT_TIMEOUT)
            .await
            .map_err(|e| format!("cannot connect to node {via}: {e}"))?;
        let mut tasks = JoinSet::new();
        for (key, want) in data.clone() {
            let client = client.clone();
            tasks.spawn(async move {
                let read = client.read(key.as_bytes()).await;
                (key, want, read)
            });
        }
        let mut audit = Audit::default();
        while let Some(done) = tasks.join_next().await {
            let (key, want, read) = done.expect("a read task does not panic");
            match read {
                Ok(r) if r.values == [want.clone()] => audit.exact += 1,
                Ok(r) if !r.values.is_empty() && r.values.iter().all(|v| *v == want) => audit
                    .duplicated
                    .push(format!("{key}: {} copies of its value", r.values.len())),
                Ok(r) => audit.lost.push(format!(
                    "{key}: read {:?}, want {:?}",
                    r.values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect::<Vec<_>>(),
                    String::from_utf8_lossy(&want)
                )),
                Err(e) => audit.failed.push(format!("{key}: {e}")),
            }
        }
        audit.duplicated.sort();
        audit.lost.sort();
        audit.failed.sort();
        Ok(audit)
    })
}

/// Audits `data` through each node of `via` and fails if any write is lost, any read fails, or
/// any write reads as more than one sibling (applied twice) through any of them; returns the
/// duplicated keys (none, when it returns at all), for the report.
fn nothing_lost(cluster: &Cluster, via: &[usize], data: &Data) -> Result<Vec<String>, String> {
    for &i in via {
        let audit = audit(cluster, i, data)?;
        audit.nothing_lost(i, data.len())?;
        if !audit.duplicated.is_empty() {
            return Err(format!(
                "through node {i}, {} writes read as several siblings (applied twice), e.g. {:?}",
                audit.duplicated.len(),
                &audit.duplicated[..audit.duplicated.len().min(5)]
            ));
        }
    }
    Ok(Vec::new())
}

/// Asserts every key of `data` reads back as exactly its one value through each node of `via`,
/// now.
#[track_caller]
fn assert_exact(cluster: &Cluster, via: &[usize], data: &Data) {
    for &i in via {
        let audit = audit(cluster, i, data).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = audit.nothing_lost(i, data.len()) {
            panic!("{e}");
        }
        assert!(
            audit.duplicated.is_empty(),
            "through node {i}, {} keys have duplicate siblings, e.g. {:?}",
            audit.duplicated.len(),
            &audit.duplicated[..audit.duplicated.len().min(5)]
        );
    }
}

/// Prints a line stamped with the time since `clock`, so a run's output is a timeline.
macro_rules! note {
    ($clock:expr, $($arg:tt)*) => {
        println!("[{:>8.2?}] {}", $clock.elapsed(), format_args!($($arg)*))
    };
}

#[test]
fn kill_dash_9_of_two_non_adjacent_nodes_under_write_load_loses_no_acknowledged_write() {
    let clock = Instant::now();
    let mut cluster = Cluster::start_with_metrics(5, &DETECTOR);
    let all = cluster.all();
    let order = cluster.ring_order(&cluster.wait_for_ring(&all));
    // Around the ring from node 0: 0, a, b, c, d. Kill a, then c: not neighbours (b lies between
    // them one way, d and 0 the other), and neither is an entry node of the writers.
    let (first, second) = (order[1], order[3]);
    let entries = [order[0], order[2], order[4]];
    note!(
        clock,
        "ring order {order:?}: killing node {first}, then node {second}"
    );

    let load = Load::start(&cluster, &entries);
    load.wait_for_progress(0, 200, "the load to get going");

    let before_first = load.acked();
    let after_first = without(&all, &[first]);
    let detected = detector_totals(&cluster, &after_first).unwrap_or_else(|e| panic!("{e}"));
    let (gone, converged) = kill_and_wait(&mut cluster, first, &after_first);
    note!(
        clock,
        "node {first} SIGKILLed with {before_first} writes acknowledged: gone from the ring walk \
         after {gone:.2?}, ring of 4 consistent after {converged:.2?}; {}",
        detections(&cluster, &after_first, &detected)
    );
    // A key whose preference list held the dead node has two copies left, or fewer in flight.
    // A second crash is survivable without luck only once anti-entropy has restored three
    // copies on every new preference list: wait for that, for the writes acknowledged so far.
    let snapshot = load.acked_so_far();
    let repaired = wait_for_full_replication(&cluster, &after_first, &snapshot);
    note!(
        clock,
        "the {} writes acknowledged by then have {N} copies on their new preference lists \
         {repaired:.2?} later",
        snapshot.len(),
    );

    let before_second = load.acked();
    let survivors = without(&after_first, &[second]);
    let detected = detector_totals(&cluster, &survivors).unwrap_or_else(|e| panic!("{e}"));
    let (gone, converged) = kill_and_wait(&mut cluster, second, &survivors);
    note!(
        clock,
        "node {second} SIGKILLed with {before_second} writes acknowledged: gone from the ring \
         walk after {gone:.2?}, ring of 3 consistent after {converged:.2?}; {}",
        detections(&cluster, &survivors, &detected)
    );
    load.wait_for_progress(
        load.acked(),
        100,
        "writes to be acknowledged by the ring of 3",
    );
    let (acked, failed) = load.stop();
    note!(clock, "load stopped");
    assert!(
        acked.len() + failed.len() < MAX_WRITES,
        "the load ran out of keys before it was stopped; raise MAX_WRITES"
    );

    // Every acknowledged write reads back through every survivor, at once.
    let started = Instant::now();
    let duplicated = nothing_lost(&cluster, &survivors, &acked).unwrap_or_else(|e| panic!("{e}"));
    let read_back = started.elapsed();
    // Writes that failed have unknown outcomes: count those stored anyway, for the record.
    let unacked: Data = failed
        .iter()
        .map(|f| (f.key.clone(), f.value.clone()))
        .collect();
    let stored_anyway = audit(&cluster, survivors[0], &unacked)
        .map(|a| a.exact + a.duplicated.len())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for f in &failed {
        *errors.entry(error_kind(&f.error)).or_default() += 1;
    }
    note!(
        clock,
        "acknowledged {}, lost 0, failed-unacknowledged {} ({stored_anyway} of them stored \
         anyway; errors {errors:?}), duplicated {} {:?}; read back through nodes {survivors:?} \
         in {read_back:.2?}",
        acked.len(),
        failed.len(),
        duplicated.len(),
        &duplicated[..duplicated.len().min(3)],
    );

    // Both crashed nodes come back on their data directories; everything reads back through
    // every node, the restarted ones included.
    note!(clock, "restarting nodes {first} and {second}");
    let restarted = Instant::now();
    cluster.restart_node(first, Some(0));
    cluster.restart_node(second, Some(0));
    let mut readable: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut converged = None;
    wait_until(
        CONVERGE,
        "the restarted nodes to serve every acknowledged write",
        || {
            if converged.is_none() {
                cluster.converged(&all)?;
                converged = Some(restarted.elapsed());
            }
            for i in [first, second] {
                if let Entry::Vacant(slot) = readable.entry(i) {
                    nothing_lost(&cluster, &[i], &acked)?;
                    slot.insert(restarted.elapsed());
                }
            }
            Ok(())
        },
    );
    let duplicated = nothing_lost(&cluster, &all, &acked).unwrap_or_else(|e| panic!("{e}"));
    note!(
        clock,
        "restarted nodes {first} and {second}: ring of 5 consistent after {:.2?}; all {} \
         acknowledged writes readable through node {first} after {:.2?} and through node \
         {second} after {:.2?}, and through every node; duplicated {} {:?}",
        converged.unwrap_or_default(),
        acked.len(),
        readable[&first],
        readable[&second],
        duplicated.len(),
        &duplicated[..duplicated.len().min(3)],
    );

    // The copies that moved while the two were away, and the strays the restarts left, settle
    // on exactly the preference lists again.
    let keys = wait_for_exact_placement(&cluster, &all, None);
    note!(
        clock,
        "exactly {N} copies of each of the {keys} keys, no strays, {:.2?} after the restarts",
        restarted.elapsed()
    );
}

/// The variant name of `e`, to count failures by kind.
fn error_kind(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn two_adjacent_nodes_killed_reads_are_served_by_the_third_replica() {
    let mut cluster = Cluster::start_with(5, &DETECTOR);
    let all = cluster.all();
    let order = cluster.ring_order(&cluster.wait_for_ring(&all));
    let data = data(300);
    put_all(&cluster, 0, &data);
    // W = 2 acknowledged each put; the third copy follows. Wait for it, so that every key has a
    // copy beyond the two nodes about to crash.
    wait_for_full_replication(&cluster, &all, &data);

    // Two neighbours, neither of them node 0: the keys they both hold survive only on the node
    // after them.
    let (a, b) = (order[2], order[3]);
    cluster.kill_node(a);
    cluster.kill_node(b);
    let survivors = without(&all, &[a, b]);
    cluster.wait_for_ring(&survivors);
    assert_exact(&cluster, &survivors, &data);
}

#[test]
fn a_write_that_cannot_reach_w_copies_is_refused_never_acknowledged_with_fewer() {
    // W = 2 of N = 3. With two nodes dead the survivor holds the only reachable copy: from the
    // kill, through the failure detector emptying its successor list, to the ring of one after,
    // no write may be acknowledged (blind writes, so no read stands in the way).
    let mut cluster = Cluster::start_with(
        3,
        &[&DETECTOR[..], &["--request-timeout-ms", "1500"]].concat(),
    );
    let all = cluster.all();
    cluster.wait_for_ring(&all);
    let client = cluster.client(0);
    let blind = VersionVector::new();
    cluster
        .block_on(client.write(b"before", b"two copies", &blind))
        .expect("a write while all three nodes run");
    // Keys in the survivor's own range. (It goes on owning only that range: it cannot tell its
    // dead predecessor from a cut-off one, so other keys get `WrongOwner`, not a write either.)
    let status = cluster.status(0).expect("node 0 answers");
    let pred = status.pred.expect("a ring of three has predecessors").id;
    let mut own_keys = (0..)
        .map(|i| format!("after-the-kill-{i}"))
        .filter(|k| in_half_open(pred, status.node.id, Id::hash(k.as_bytes())));

    let clock = Instant::now();
    cluster.kill_node(1);
    cluster.kill_node(2);
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut alone_since = None;
    let mut last = None;
    for i in 0.. {
        let key = own_keys.next().expect("endless");
        match cluster.block_on(client.write(key.as_bytes(), b"one copy?", &blind)) {
            Ok(w) => panic!(
                "{key} acknowledged ({:?}) {:.2?} after two of the three nodes died",
                w.dot,
                clock.elapsed()
            ),
            Err(e) => {
                *refused.entry(error_kind(&e)).or_default() += 1;
                last = Some(e);
            }
        }
        if alone_since.is_none() && cluster.converged(&[0]).is_ok() {
            alone_since = Some(i);
        }
        // A few more once the survivor knows it is alone: the steady state, not the transition.
        if alone_since.is_some_and(|since| i >= since + 3) {
            break;
        }
        assert!(
            clock.elapsed() < CONVERGE,
            "the survivor never saw itself alone"
        );
    }
    println!(
        "refused while and after the ring shrank to one ({:.2?}): {refused:?}",
        clock.elapsed()
    );
    let last = last.expect("at least one write was tried");
    let message = last.to_string();
    assert!(
        matches!(last, Error::Unavailable(_))
            && message.contains("needs 2 copies")
            && message.contains("only 1 can be reached"),
        "the steady-state refusal says what is missing: {message}"
    );
    // What was acknowledged before is still there, and a write succeeds once a replica is back.
    cluster.restart_node(1, Some(0));
    cluster.wait_for_ring(&[0, 1]);
    assert_eq!(
        cluster
            .block_on(client.read(b"before"))
            .expect("read")
            .values,
        [b"two copies".to_vec()]
    );
    cluster
        .block_on(client.write(b"after-the-restart", b"two copies", &blind))
        .expect("a write with two nodes up");
}

#[test]
fn concurrent_blind_writes_from_two_clients_become_siblings_not_losses() {
    let cluster = Cluster::start_with(5, &DETECTOR);
    let (left, right) = (cluster.client(1), cluster.client(2));
    let key = b"contended";
    // Both write with the empty context: neither saw the other's version, so neither replaces it.
    let blind = VersionVector::new();
    let (a, b) = cluster.block_on(async {
        tokio::join!(
            left.write(key, b"from the left", &blind),
            right.write(key, b"from the right", &blind),
        )
    });
    let (a, b) = (a.expect("left write"), b.expect("right write"));
    assert_ne!(a.dot, b.dot, "two writes got one dot");

    // Every node returns both values, and `get`, which wants one, refuses.
    let mut context = VersionVector::new();
    for i in cluster.all() {
        let client = cluster.client(i);
        let read = cluster
            .block_on(client.read(key))
            .unwrap_or_else(|e| panic!("read through node {i}: {e}"));
        let mut values = read.values.clone();
        values.sort();
        assert_eq!(
            values,
            [b"from the left".to_vec(), b"from the right".to_vec()],
            "siblings read through node {i}"
        );
        let got = cluster.block_on(client.get(key));
        assert!(matches!(got, Err(Error::Conflict(_))), "{got:?}");
        context = read.context;
    }

    // A write with the read's context replaces both siblings: one value, through every node.
    let resolver = cluster.client(3);
    cluster
        .block_on(resolver.write(key, b"merged", &context))
        .expect("the resolving write");
    for i in cluster.all() {
        let read = cluster
            .block_on(cluster.client(i).read(key))
            .unwrap_or_else(|e| panic!("read through node {i}: {e}"));
        assert_eq!(read.values, [b"merged".to_vec()], "through node {i}");
    }
}

#[test]
fn deleted_keys_are_collected_from_every_replica_and_can_be_written_again() {
    let clock = Instant::now();
    let cluster = Cluster::start_with(5, &["--tombstone-grace-ms", "1000", "--sync-ms", "200"]);
    let all = cluster.all();
    cluster.wait_for_ring(&all);
    let data = data(200);
    put_all(&cluster, 0, &data);
    wait_for_full_replication(&cluster, &all, &data);

    // Delete every other key, through every node in turn.
    let doomed: Vec<&String> = data.keys().step_by(2).collect();
    let clients: Vec<Client> = all.iter().map(|&i| cluster.client(i)).collect();
    cluster.block_on(async {
        for (n, key) in doomed.iter().enumerate() {
            let existed = clients[n % clients.len()]
                .delete(key.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("delete {key}: {e}"));
            assert!(existed, "{key} was there to delete");
        }
    });
    let deleted = Instant::now();
    // Tombstones first take the place of the values on all three replicas, then go.
    let left = (data.len() - doomed.len()) as u64;
    wait_for_exact_placement(&cluster, &all, Some(left));
    note!(
        clock,
        "{} tombstones collected from all {N} replicas {:.2?} after the deletes (grace 1 s); \
         {left} keys left",
        doomed.len(),
        deleted.elapsed()
    );

    // Deleted keys read as absent, the others as written; a deleted key can be written again.
    cluster.block_on(async {
        let client = &clients[1];
        for (key, value) in &data {
            let got = client.get(key.as_bytes()).await.expect("read");
            if doomed.contains(&key) {
                assert_eq!(got, None, "{key} was deleted");
                client
                    .put(key.as_bytes(), b"again")
                    .await
                    .expect("write again");
                let again = clients[3].get(key.as_bytes()).await.expect("read again");
                assert_eq!(again.as_deref(), Some(&b"again"[..]), "{key} written again");
            } else {
                assert_eq!(got.as_ref(), Some(value), "{key} kept its value");
            }
        }
    });
}

/// How long the 40 KB reproduction may take to reach full copies after the third node joined.
/// Measured: 8.9 s (debug build, a 2-core machine busy with two other builds; the test prints
/// its figure with `--nocapture`); the bound leaves a slower CI machine four times that.
const LARGE_VALUES_FULL_COPIES: Duration = Duration::from_secs(40);

/// Held by the tests that move hundreds of megabytes between nodes (large values), so that they
/// do not run at once: together on a 2-core machine, debug-built, they starve each other's
/// heartbeats and requests, and a timeout would say nothing about the store.
static LARGE_VALUES: Mutex<()> = Mutex::new(());

/// Issue 7, defect 2, as reproduced on real nodes: values over ~32 KiB made anti-entropy pushes
/// of 256 states exceed the 8 MiB frame, so they failed, silently, and the third node never got
/// the copies it keeps as a replica (2/3 copies forever). Every message that carries states is
/// bounded by bytes now.
#[test]
fn a_ring_grown_from_one_node_of_700_keys_of_40_kb_reaches_three_copies_of_every_key() {
    let _alone = LARGE_VALUES.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new();
    // Alone, the first node takes the writes with one copy (W = 1), as a ring of one may by
    // configuration; the copies after the joins are what the test is about.
    let first = cluster.start_node(None, &["--write-quorum", "1", "--read-quorum", "1"]);
    let data: Data = (0..700)
        .map(|i| {
            let mut value = format!("value-{i}-").into_bytes();
            value.resize(40_000, b'a' + (i % 26) as u8);
            (format!("key-{i:04}"), value)
        })
        .collect();
    let clock = Instant::now();
    put_all(&cluster, first, &data);
    let written = clock.elapsed();
    let second = cluster.start_node(Some(first), &[]);
    cluster.wait_for_ring(&[first, second]);
    let two = clock.elapsed();
    let third_started = Instant::now();
    let third = cluster.start_node(Some(first), &[]);
    let all = [first, second, third];
    cluster.wait_for_ring(&all);
    let took = wait_for_full_replication_within(&cluster, &all, &data, LARGE_VALUES_FULL_COPIES);
    println!(
        "{N} copies of 700 keys of 40 KB on every node {:.1} s after the third node started \
         ({:.1} s after its ring converged; written in {:.1} s, a ring of two {:.1} s later)",
        third_started.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        written.as_secs_f64(),
        (two - written).as_secs_f64(),
    );
}

/// Issue 7, defect 3, on real nodes: three 3 MB blind writes to one key would leave a 9 MB
/// state, over the 8 MiB frame, that could no longer be read (so its siblings could never be
/// resolved) nor moved. The third is refused, saying which bound and what to do; every node
/// still reads both siblings, and a write with the read's context replaces them.
#[test]
fn a_third_3_mb_blind_write_to_one_key_is_refused_and_the_key_stays_readable_and_resolvable() {
    let _alone = LARGE_VALUES.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start_with(N, &DETECTOR);
    let key = b"contended";
    let big = |tag: u8| vec![tag; 3_000_000];
    let blind = VersionVector::new();
    let client = cluster.client(0);
    for tag in [b'a', b'b'] {
        cluster
            .block_on(client.write(key, &big(tag), &blind))
            .unwrap_or_else(|e| panic!("blind write {}: {e}", tag as char));
    }
    let refused = cluster.block_on(cluster.client(1).write(key, &big(b'c'), &blind));
    match &refused {
        Err(e @ Error::TooLarge { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("state") && message.contains("context"),
                "the refusal says which bound and what to do: {message}"
            );
            println!("the third write was refused: {message}");
        }
        other => panic!("a third 3 MB sibling was not refused: {other:?}"),
    }
    let mut context = VersionVector::new();
    for i in cluster.all() {
        let read = cluster
            .block_on(cluster.client(i).read(key))
            .unwrap_or_else(|e| panic!("read through node {i}: {e}"));
        let mut values = read.values.clone();
        values.sort();
        assert!(
            values == [big(b'a'), big(b'b')],
            "siblings through node {i}"
        );
        context = read.context;
    }
    cluster
        .block_on(cluster.client(2).write(key, &big(b'c'), &context))
        .expect("the resolving write");
    for i in cluster.all() {
        let read = cluster
            .block_on(cluster.client(i).read(key))
            .unwrap_or_else(|e| panic!("read through node {i}: {e}"));
        assert!(read.values == [big(b'c')], "one value through node {i}");
    }
    // The ring did not flap: it stays one converged ring of all three for a while.
    let all = cluster.all();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        if let Err(e) = cluster.converged(&all) {
            panic!(
                "the ring came apart {:.1?} after the writes: {e}",
                watch.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
