//! Lookup hops on a real ring of node processes next to the simulator's, for the same ring:
//! 32 release-built `chordkv-node` processes on loopback (default flags: r = 8 successors,
//! stabilize every 500 ms, one finger refreshed every 100 ms), the real `kvctl --json lookup`
//! as child processes, and the same lookups in the deterministic simulator.
//!
//! Node `i` of the real ring is started with `--node-id` of the simulator's node `i` (the SHA-1 of
//! its simulated address), so both rings place the same ids on the circle; the keys
//! (`bench-key-K`) and the node each lookup starts from (seeded) are the same too. Once both
//! rings have settled, routing is deterministic, so the two distributions should agree lookup
//! for lookup; the bench counts how many do, hops and owner.
//!
//! Settled means: the ring walked from node 0 is consistent with every node keeping 3 copies,
//! and then every node's predecessor and successor list (r = 8) are exact and its finger table
//! (`NodeStatus::fingers`, the distinct nodes in it) is exactly `successor(n + 2^i)` for i in
//! 0..160 over the ring's members, as the simulator's settled ring is; the bench prints how
//! long each took. (Exact fingers alone are not enough: a successor list still skipping a
//! newcomer reaches further round the ring, and routes some lookups in fewer hops.) Then `CHORDKV_HOPS_LOOKUPS` lookups (default 2,000), each
//! `kvctl --node NODE --json lookup KEY` from a random node, four at a time.
//!
//! `cargo bench --bench real_hops` (about a minute, plus the release build);
//! `CHORDKV_HOPS_NODES` changes N. The plot `real-hops.svg` goes to `CHORDKV_PLOTS_DIR`
//! (default `target/plots`).

mod common;

use chordkv_node::id::Id;
use chordkv_node::message::NodeRef;
use chordkv_node::message::{Request, Response};
use chordkv_node::testing::sim::{Sim, SimOptions, successor_in};
use common::env::env_or;
use common::{node_binary, plot, release_binary, start_nodes_each, wait_for_nodes_within};
use kvctl::{Client, RingView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const HOP_DEFINITION: &str = "a hop is one remote node the originator asks (a FindSuccessor \
request) in its iterative lookup; the originator's own routing step is not counted, so a lookup \
it answers from its own state (the key in (pred, self] or (self, successor]) takes 0 hops";

/// The nodes' successor list length r (the node's default `--successors`).
const SUCCESSORS: usize = 8;

/// Where a lookup ended: hops, timeouts, the owner's id.
#[derive(Clone, Debug, PartialEq)]
struct Found {
    hops: u32,
    timeouts: u32,
    owner: Id,
}

/// The id of simulated node `i`, which real node `i` takes too.
fn sim_id(i: usize) -> Id {
    Id::hash(Sim::addr(i).to_string().as_bytes())
}

/// The same lookups in the simulator, on a settled ring of `n` nodes (`Sim::grow_settled`: the
/// state joins and stabilization converge to, every successor list and finger exact; seed 42).
fn sim_lookups(n: usize, lookups: &[(usize, String)]) -> Vec<Option<Found>> {
    let mut sim = Sim::new(SimOptions {
        seed: 42,
        ..SimOptions::default()
    });
    sim.grow_settled(n);
    let tokens: Vec<_> = lookups
        .iter()
        .map(|(from, key)| {
            let key = key.clone().into_bytes();
            sim.submit(*from, Request::Lookup { key })
        })
        .collect();
    sim.run_for(5_000);
    tokens
        .into_iter()
        .map(|t| match sim.response(t) {
            Some(Ok(Response::Lookup(info))) => Some(Found {
                hops: info.hops,
                timeouts: info.timeouts,
                owner: info.owner.id,
            }),
            _ => None,
        })
        .collect()
}

/// How many nodes of `view` are not settled: their predecessor, successor list (`r` long) or
/// finger table (the distinct nodes in it) differ from the exact ones over the ring's members
/// (0: every node routes as in a settled ring).
fn unsettled(view: &RingView, r: usize) -> usize {
    let mut ring: Vec<NodeRef> = view
        .nodes
        .iter()
        .filter_map(|m| m.status())
        .map(|s| s.node)
        .collect();
    ring.sort_unstable();
    let n = ring.len();
    let ids = |nodes: &[NodeRef]| -> Vec<Id> { nodes.iter().map(|x| x.id).collect() };
    let mut wrong = 0;
    for s in view.nodes.iter().filter_map(|m| m.status()) {
        let me = s.node.id;
        let pos = ring.partition_point(|x| x.id < me);
        let succs: Vec<Id> = (1..=r.min(n - 1)).map(|k| ring[(pos + k) % n].id).collect();
        let pred = ring[(pos + n - 1) % n].id;
        let mut want: Vec<Id> = (0..chordkv_node::id::BITS)
            .filter_map(|i| successor_in(&ring, me.add_pow2(i)))
            .map(|x| x.id)
            .filter(|id| *id != me)
            .collect();
        want.sort_unstable();
        want.dedup();
        let mut have = ids(&s.fingers);
        have.sort_unstable();
        if have != want || ids(&s.succs) != succs || s.pred.map(|p| p.id) != Some(pred) {
            wrong += 1;
        }
    }
    wrong
}

/// One `kvctl --json lookup` child process.
fn kvctl_lookup(kvctl: &Path, node: &str, key: &str) -> Result<Found, String> {
    let out = Command::new(kvctl)
        .args(["--node", node, "--json", "lookup", key])
        .output()
        .map_err(|e| format!("kvctl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("json: {e}"))?;
    let owner = v["owner"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("no owner id")?;
    Ok(Found {
        hops: v["hops"].as_u64().ok_or("no hops")? as u32,
        timeouts: v["timeouts"].as_u64().ok_or("no timeouts")? as u32,
        owner,
    })
}

/// Count per hop value, mean, p50 and p99.
struct Summary {
    counts: BTreeMap<u32, usize>,
    mean: f64,
    p50: u32,
    p99: u32,
    timeouts: u64,
    n: usize,
}

fn summary(found: &[Option<Found>]) -> Summary {
    let mut hops: Vec<u32> = found.iter().flatten().map(|f| f.hops).collect();
    hops.sort_unstable();
    let mut counts = BTreeMap::new();
    for &h in &hops {
        *counts.entry(h).or_default() += 1;
    }
    let pct = |p: f64| {
        hops.get(((hops.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Summary {
        mean: hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len().max(1) as f64,
        p50: pct(0.5),
        p99: pct(0.99),
        timeouts: found.iter().flatten().map(|f| u64::from(f.timeouts)).sum(),
        n: hops.len(),
        counts,
    }
}

fn main() {
    let n = env_or("CHORDKV_HOPS_NODES", 32).max(2) as usize;
    let count = env_or("CHORDKV_HOPS_LOOKUPS", 2_000).max(1) as usize;
    let mut rng = StdRng::seed_from_u64(7);
    let lookups: Vec<(usize, String)> = (0..count)
        .map(|k| (rng.random_range(0..n), format!("bench-key-{k}")))
        .collect();

    let node_bin = node_binary();
    let kvctl = release_binary("kvctl", "kvctl");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let start = Instant::now();
    let mut ring = start_nodes_each(&node_bin, n, &[], |i| {
        vec!["--node-id".into(), sim_id(i).to_string()]
    });
    std::thread::sleep(Duration::from_millis(500));
    ring.assert_running();
    let addr = ring.addrs[0].clone();
    rt.block_on(wait_for_nodes_within(
        &addr,
        n,
        3.min(n) as u32,
        Duration::from_secs(180),
    ));
    let consistent = start.elapsed();
    let (settled, wrong) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut wrong = usize::MAX;
        while Instant::now() < deadline {
            if let Ok(c) = Client::connect(&addr, Duration::from_secs(1)).await {
                if let Ok(view) = c.ring_view().await {
                    wrong = if view.is_consistent() && view.nodes.len() == n {
                        unsettled(&view, SUCCESSORS)
                    } else {
                        n
                    };
                    if wrong == 0 {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (start.elapsed(), wrong)
    });
    eprintln!(
        "{n} nodes: ring consistent after {:.1} s, settled after {:.1} s",
        consistent.as_secs_f64(),
        settled.as_secs_f64()
    );

    let lookup_start = Instant::now();
    let workers = 4;
    let mut real: Vec<Option<Found>> = vec![None; count];
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (kvctl, ring, lookups) = (&kvctl, &ring, &lookups);
                scope.spawn(move || {
                    (w..lookups.len())
                        .step_by(workers)
                        .map(|i| {
                            let (from, key) = &lookups[i];
                            (i, kvctl_lookup(kvctl, &ring.addrs[*from], key))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a lookup thread") {
                match r {
                    Ok(f) => real[i] = Some(f),
                    Err(e) => *failures.entry(e).or_default() += 1,
                }
            }
        }
    });
    let lookup_secs = lookup_start.elapsed().as_secs_f64();
    drop(ring);

    let sim = sim_lookups(n, &lookups);
    let (r, s) = (summary(&real), summary(&sim));
    let same_hops = real
        .iter()
        .zip(&sim)
        .filter(|(a, b)| matches!((a, b), (Some(a), Some(b)) if a.hops == b.hops))
        .count();
    let same_owner = real
        .iter()
        .zip(&sim)
        .filter(|(a, b)| matches!((a, b), (Some(a), Some(b)) if a.owner == b.owner))
        .count();

    println!(
        "lookup hops, N = {n}, {count} lookups of bench-key-0.. from random nodes (seed 7); \
         real: {n} chordkv-node processes on loopback, default flags, node i with the simulated \
         node i's id; simulation: seed 42, default options"
    );
    println!("hop count: {HOP_DEFINITION}");
    println!(
        "real ring: consistent after {:.1} s, settled (every predecessor, successor list and \
         finger exact) after {:.1} s{}; {count} kvctl lookups in {lookup_secs:.1} s",
        consistent.as_secs_f64(),
        settled.as_secs_f64(),
        if wrong == 0 {
            String::new()
        } else {
            format!(" (NOT settled at the deadline: {wrong} nodes)")
        }
    );
    println!(
        "{:>5}  {:>6} {:>6}  {:>6} {:>6}",
        "hops", "real", "%", "sim", "%"
    );
    let values: Vec<u32> = r.counts.keys().chain(s.counts.keys()).copied().collect();
    let (lo, hi) = (
        values.iter().copied().min().unwrap_or(0),
        values.iter().copied().max().unwrap_or(0),
    );
    let pc = |c: usize, of: usize| 100.0 * c as f64 / of.max(1) as f64;
    for h in lo..=hi {
        let (a, b) = (
            r.counts.get(&h).copied().unwrap_or(0),
            s.counts.get(&h).copied().unwrap_or(0),
        );
        println!(
            "{h:>5}  {a:>6} {:>5.1}%  {b:>6} {:>5.1}%",
            pc(a, r.n),
            pc(b, s.n)
        );
    }
    for (name, x) in [("real", &r), ("sim", &s)] {
        println!(
            "{name:>5}: {} answered, mean {:.3}, p50 {}, p99 {}, timeouts {}",
            x.n, x.mean, x.p50, x.p99, x.timeouts
        );
    }
    println!(
        "½·log2 N = {:.2}; the same hop count in {same_hops} of {count} lookups, the same owner \
         in {same_owner}",
        0.5 * (n as f64).log2()
    );
    let differ: Vec<String> = lookups
        .iter()
        .zip(real.iter().zip(&sim))
        .filter_map(|((from, key), (a, b))| match (a, b) {
            (Some(a), Some(b)) if a.hops != b.hops => Some(format!(
                "{key} from node {from}: real {}, sim {}",
                a.hops, b.hops
            )),
            _ => None,
        })
        .collect();
    for d in differ.iter().take(10) {
        println!("  differs: {d}");
    }
    for (e, k) in &failures {
        println!("failed real lookups ({k}): {e}");
    }

    let groups: Vec<String> = (lo..=hi)
        .map(|h| format!("{h} hop{}", if h == 1 { "" } else { "s" }))
        .collect();
    let share = |x: &Summary| -> Vec<f64> {
        (lo..=hi)
            .map(|h| pc(x.counts.get(&h).copied().unwrap_or(0), x.n))
            .collect()
    };
    let series = vec![
        (format!("real ({n} processes)"), share(&r)),
        ("simulation".to_string(), share(&s)),
    ];
    let path = plot::plots_dir().join("real-hops.svg");
    plot::grouped_bars(
        &path,
        &format!("lookup hops, N = {n}, {count} lookups: real ring and simulation"),
        "lookups, %",
        &groups,
        &series,
    )
    .expect("write the plot");
    println!("plot: {}", path.display());
}
