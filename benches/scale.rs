//! How gets and puts scale with the data size, the ring size and the routing: one table from
//! one run. Rows: {1 node (N = 1), 3 nodes (N = 3, R = 2, W = 2)} × {the small key space,
//! after loading the large one} × {direct, via a node}; columns: get/s, get p99 and p99.9,
//! put/s and put p99.9. Then the ratios issue 9 asks for, and each node's RSS beside its sled
//! directory's size on disk at the large key space.
//!
//! Release-built `chordkv-node` processes on loopback in a temporary directory, driven by the
//! release-built `kvctl bench --json` as a child process: the bench measures the real CLI a
//! user would run, its client work stays out of this process, and the figures are the very
//! JSON a user gets. Each cell is two runs of `CHORDKV_BENCH_SECS` seconds (default 10) with
//! `CHORDKV_BENCH_CLIENTS` clients (default 64) and 16-byte values: gets of loaded keys
//! (uniformly over the key space), then puts. A put inserts a fresh key (`--insert`: one
//! durable write, as in the durability bench), so the put runs add keys beyond the key space;
//! the table says how many keys the ring held when each cell began. Key spaces:
//! `CHORDKV_BENCH_SMALL_KEYS` (default 10,000) and `CHORDKV_BENCH_KEYS` (default 1,000,000).
//!
//! `cargo bench --bench scale`; e.g. `CHORDKV_BENCH_KEYS=100000 CHORDKV_BENCH_SECS=3` for a
//! quick run.

mod common;

use common::env::env_or;
use common::{
    bench, bench_args, node_binary, num as f, release_binary, start_nodes, wait_for_nodes,
};
use serde_json::Value;
use std::path::Path;

/// One row of the table.
struct Row {
    nodes: usize,
    keys: u64,
    held: u64,
    direct: bool,
    get_s: f64,
    get_p99: f64,
    get_p999: f64,
    put_s: f64,
    put_p999: f64,
    errors: u64,
    share: Option<f64>,
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += du(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A process's resident set size in bytes (VmRSS in /proc/PID/status), if readable.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let small = env_or("CHORDKV_BENCH_SMALL_KEYS", 10_000);
    let large = env_or("CHORDKV_BENCH_KEYS", 1_000_000).max(small);
    let secs = env_or("CHORDKV_BENCH_SECS", 10).max(1);
    let clients = env_or("CHORDKV_BENCH_CLIENTS", 64).max(1);
    let node_bin = node_binary();
    let kvctl = release_binary("kvctl", "kvctl");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let common = |op: &str, keys: u64, direct: bool| -> Vec<String> {
        let mut a = bench_args(op, clients, keys, secs);
        a.push(if direct { "--direct" } else { "--via-node" }.into());
        if op == "put" {
            a.push("--insert".into());
        }
        a
    };

    let mut rows = Vec::new();
    let mut memory = Vec::new();
    for nodes in [1usize, 3] {
        let args: &[&str] = if nodes == 1 {
            &["--replicas", "1", "--stabilize-ms", "100"]
        } else {
            &[
                "--replicas",
                "3",
                "--read-quorum",
                "2",
                "--write-quorum",
                "2",
                "--stabilize-ms",
                "100",
            ]
        };
        let ring = start_nodes(&node_bin, nodes, args);
        rt.block_on(wait_for_nodes(&ring.addrs[0], nodes, nodes as u32));
        let node = ring.addrs[0].clone();
        let mut loaded = 0u64;
        let mut inserted = 0u64;
        for keys in [small, large] {
            let load: Vec<String> = vec![
                "--op".into(),
                "get".into(),
                "--requests".into(),
                "1".into(),
                "--keys".into(),
                keys.to_string(),
                "--load".into(),
                "--load-from".into(),
                loaded.to_string(),
                "--clients".into(),
                clients.to_string(),
                "--value-size".into(),
                "16".into(),
            ];
            let report = bench(&kvctl, &node, &load);
            eprintln!(
                "{nodes} node(s): loaded keys {loaded}..{keys} in {:.1} s",
                f(&report["load"]["secs"])
            );
            loaded = keys;
            for direct in [true, false] {
                let held = loaded + inserted;
                let get = bench(&kvctl, &node, &common("get", keys, direct));
                let put = bench(&kvctl, &node, &common("put", keys, direct));
                inserted += put["put"]["ok"].as_u64().unwrap_or(0);
                let share = match (f(&get["direct_share"]), f(&put["direct_share"])) {
                    (a, b) if a.is_nan() || b.is_nan() => None,
                    _ => {
                        let d = |r: &Value| r["route"]["direct"].as_u64().unwrap_or(0) as f64;
                        let t = |r: &Value| r["requests"].as_u64().unwrap_or(0) as f64;
                        Some((d(&get) + d(&put)) / (t(&get) + t(&put)).max(1.0))
                    }
                };
                let errors = get["requests"].as_u64().unwrap_or(0)
                    - get["ok"].as_u64().unwrap_or(0)
                    + put["requests"].as_u64().unwrap_or(0)
                    - put["ok"].as_u64().unwrap_or(0);
                rows.push(Row {
                    nodes,
                    keys,
                    held,
                    direct,
                    get_s: f(&get["get"]["per_s"]),
                    get_p99: f(&get["get"]["latency_ms"]["p99"]),
                    get_p999: f(&get["get"]["latency_ms"]["p99_9"]),
                    put_s: f(&put["put"]["per_s"]),
                    put_p999: f(&put["put"]["latency_ms"]["p99_9"]),
                    errors,
                    share,
                });
            }
        }
        for (i, pid) in ring.pids().into_iter().enumerate() {
            memory.push((nodes, i, rss(pid), du(&ring.data_dir(i))));
        }
        drop(ring);
    }

    println!(
        "scale: {clients} clients, 16-byte values, {secs} s per run; keys {small} and {large}; \
         puts insert fresh keys"
    );
    println!(
        "{:>5} {:>9} {:>9} {:>8} | {:>9} {:>8} {:>9} | {:>9} {:>9} | {:>6} {:>7}",
        "nodes",
        "keys",
        "held",
        "routing",
        "get/s",
        "p99 ms",
        "p99.9 ms",
        "put/s",
        "p99.9 ms",
        "errors",
        "direct"
    );
    for r in &rows {
        println!(
            "{:>5} {:>9} {:>9} {:>8} | {:>9.0} {:>8.2} {:>9.2} | {:>9.0} {:>9.2} | {:>6} {:>7}",
            r.nodes,
            r.keys,
            r.held,
            if r.direct { "direct" } else { "via-node" },
            r.get_s,
            r.get_p99,
            r.get_p999,
            r.put_s,
            r.put_p999,
            r.errors,
            r.share
                .map_or_else(|| "-".to_string(), |s| format!("{:.2}%", s * 100.0))
        );
    }

    let cell = |nodes: usize, keys: u64, direct: bool| {
        rows.iter()
            .find(|r| r.nodes == nodes && r.keys == keys && r.direct == direct)
            .expect("every cell ran")
    };
    println!("\nratios (issue 9 targets in brackets):");
    for nodes in [1, 3] {
        for direct in [true, false] {
            let (a, b) = (cell(nodes, large, direct), cell(nodes, small, direct));
            let how = if direct { "direct" } else { "via-node" };
            println!(
                "  {nodes} node(s) {how:>8}: get p99.9 {large}/{small} = {:.2} [<= 1.5], \
                 get/s {large}/{small} = {:.2} [>= 0.8]",
                a.get_p999 / b.get_p999,
                a.get_s / b.get_s
            );
        }
    }
    for keys in [small, large] {
        for direct in [true, false] {
            let how = if direct { "direct" } else { "via-node" };
            println!(
                "  {keys} keys {how:>8}: get/s 3 nodes / 1 node = {:.2} [>= 0.5]",
                cell(3, keys, direct).get_s / cell(1, keys, direct).get_s
            );
        }
    }
    for keys in [small, large] {
        let r = cell(3, keys, true);
        println!(
            "  3 nodes {keys} keys direct: durable put/s {:.0} [>= 15000], put p99.9 {:.2} ms \
             [< 20]",
            r.put_s, r.put_p999
        );
    }
    let shares: Vec<f64> = rows.iter().filter_map(|r| r.share).collect();
    let worst = shares.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "  direct share, lowest cell: {:.2}% [>= 99%]",
        worst * 100.0
    );
    println!("\nmemory at {large} keys (and the inserted ones), per node:");
    for (nodes, i, rss, disk) in memory {
        let rss = rss.map_or_else(|| "?".to_string(), |b| format!("{:.1} MiB", mib(b)));
        println!(
            "  {nodes}-node ring, node {i}: RSS {rss}, sled directory {:.1} MiB",
            mib(disk)
        );
    }
}
