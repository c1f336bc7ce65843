//! Latency and throughput of gets and puts as a user's `kvctl bench` sees them: rings of 1, 3
//! and 8 nodes × {get, put, mix} × {direct, via a node} × {plain, in sessions}. One table, and
//! SVG plots of the latency percentiles per configuration.
//!
//! The default run takes about 5 minutes on a 2-core machine (36 runs of 5 s, each after
//! loading its keys, and three rings to start), plus the release build of the node and kvctl
//! the first time (`CHORDKV_NODE_BIN` names a node binary to run instead).
//!
//! Release-built `chordkv-node` processes on loopback in a temporary directory, with the node's
//! default flags (N = 3 copies, majority quorums R = W = 2) except `--replicas 1` on the lone
//! node, which refuses writes without it; driven by the release-built `kvctl --json bench` as a
//! child process, as in `benches/scale.rs`. Every run uses `CHORDKV_BENCH_CLIENTS` clients
//! (default 32) for `CHORDKV_BENCH_SECS` seconds (default 5), 16-byte values, over a key space
//! of `CHORDKV_BENCH_KEYS` keys (default 2,000) that the same kvctl process first loads under a
//! prefix of its own (the load is not measured). So every get finds its key, and every put is
//! one write round trip: kvctl knows each key's context from loading it (a put of a key whose
//! context a kvctl process does not know reads it first and counts both round trips, which a
//! key space loaded once by another process would cost every first put of a key). With
//! `--sessions`, each client's session is the one that loaded its keys, so its reads carry
//! floors and its writes dependencies, as a session that reads what it wrote does. A mix is
//! 90% gets. What a session costs here is its bounds: a mix's gets range over the whole key
//! space, so each client's session comes to hold most of it, and every write of a session
//! carries the session's keys not yet on all copies as dependencies; on the first run (2,000
//! keys) such puts took seconds and some failed with `session_full`, while the get-only and
//! put-only runs, whose sessions hold a client's own 63 keys, cost 2 to 8 times plain latency.
//!
//! `cargo bench --bench latency`; `CHORDKV_LATENCY_NODES=1,3` picks ring sizes. Plots:
//! `latency-get.svg`, `latency-put.svg` and `latency-mix.svg` in `CHORDKV_PLOTS_DIR` (default
//! `target/plots`).

mod common;

use chordkv_node::kv;
use common::env::env_or;
use common::plot::{self, Bars};
use common::{bench, bench_args, node_binary, num, release_binary, start_nodes, wait_for_nodes};
use kvctl::Client;
use serde_json::Value;
use std::time::Duration;

/// One run's figures.
struct Row {
    nodes: usize,
    op: &'static str,
    direct: bool,
    sessions: bool,
    ops_s: f64,
    /// p50, p99, p99.9 in ms (NaN: the run sent none).
    get: [f64; 3],
    put: [f64; 3],
    errors: u64,
    /// Errors by kind, and gets that found no value, if any.
    notes: String,
}

impl Row {
    fn routing(&self) -> &'static str {
        if self.direct { "direct" } else { "via-node" }
    }

    fn label(&self) -> String {
        let nodes = if self.nodes == 1 {
            "1 node".to_string()
        } else {
            format!("{} nodes", self.nodes)
        };
        let sessions = if self.sessions { "sessions" } else { "plain" };
        format!("{nodes}\n{}\n{sessions}", self.routing())
    }
}

/// p50, p99 and p99.9 of one operation of a report, if it ran.
fn percentiles(op: &Value) -> [f64; 3] {
    if op["count"].as_u64().unwrap_or(0) == 0 {
        return [f64::NAN; 3];
    }
    let l = &op["latency_ms"];
    [num(&l["p50"]), num(&l["p99"]), num(&l["p99_9"])]
}

fn cell(v: f64) -> String {
    if v.is_nan() {
        "-".to_string()
    } else {
        format!("{v:.2}")
    }
}

fn main() {
    let secs = env_or("CHORDKV_BENCH_SECS", 5).max(1);
    let clients = env_or("CHORDKV_BENCH_CLIENTS", 32).max(1);
    let keys = env_or("CHORDKV_BENCH_KEYS", 2_000).max(1);
    let sizes: Vec<usize> = common::env::env_list("CHORDKV_LATENCY_NODES", &[1, 3, 8])
        .into_iter()
        .map(|n| n as usize)
        .collect();
    let node_bin = node_binary();
    let kvctl = release_binary("kvctl", "kvctl");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let mut rows = Vec::new();
    let mut replication = Vec::new();
    for &nodes in &sizes {
        let flags: &[&str] = if nodes == 1 {
            &["--replicas", "1"]
        } else {
            &[]
        };
        let ring = start_nodes(&node_bin, nodes, flags);
        let addr = ring.addrs[0].clone();
        let wanted = if nodes == 1 { 1 } else { 3 };
        rt.block_on(wait_for_nodes(&addr, nodes, wanted.min(nodes) as u32));
        // N as the nodes report it; R and W are not reported, so from the rule the node binary
        // applies to an N without --read-quorum and --write-quorum.
        let n = rt.block_on(async {
            let c = Client::connect(&addr, Duration::from_secs(2))
                .await
                .expect("connect");
            let view = c.ring_view().await.expect("ring view");
            view.nodes
                .iter()
                .filter_map(|m| m.status())
                .map(|s| s.replicas_wanted)
                .max()
                .unwrap_or(0) as usize
        });
        let q = kv::Options::with_replicas(n);
        replication.push(format!(
            "{nodes} node(s): N = {n}, R = {}, W = {}",
            q.read_quorum, q.write_quorum
        ));
        for op in ["get", "put", "mix"] {
            for direct in [true, false] {
                for sessions in [false, true] {
                    let routing = if direct { "--direct" } else { "--via-node" };
                    let mut args = bench_args(op, clients, keys, secs);
                    let prefix = format!("lat-{op}{routing}-{sessions}-");
                    args.extend(["--load", "--key-prefix", &prefix, routing].map(String::from));
                    if sessions {
                        args.push("--sessions".into());
                    }
                    let r = bench(&kvctl, &addr, &args);
                    let requests = r["requests"].as_u64().unwrap_or(0);
                    let errors = requests.saturating_sub(r["ok"].as_u64().unwrap_or(0));
                    let mut notes = Vec::new();
                    if let Some(kinds) = r["errors"].as_object() {
                        notes.extend(kinds.iter().map(|(k, n)| format!("{k} {n}")));
                    }
                    let missing = r["get"]["missing"].as_u64().unwrap_or(0);
                    if missing > 0 {
                        notes.push(format!("{missing} gets found nothing"));
                    }
                    let load_errors = r["load"]["errors"].as_u64().unwrap_or(0);
                    if load_errors > 0 {
                        notes.push(format!("{load_errors} load errors"));
                    }
                    let row = Row {
                        nodes,
                        op,
                        direct,
                        sessions,
                        ops_s: num(&r["throughput"]),
                        get: percentiles(&r["get"]),
                        put: percentiles(&r["put"]),
                        errors,
                        notes: notes.join(", "),
                    };
                    eprintln!(
                        "{nodes} node(s) {op} {} {}: {:.0} ops/s",
                        row.routing(),
                        if sessions { "sessions" } else { "plain" },
                        row.ops_s
                    );
                    rows.push(row);
                }
            }
        }
        drop(ring);
    }

    println!(
        "latency: {clients} clients, {secs} s per run, 16-byte values, {keys} keys loaded per \
         run by the measuring kvctl; a mix is 90% gets; latencies in ms"
    );
    println!(
        "replication (N copies, R read and W write quorum): {}",
        replication.join("; ")
    );
    println!(
        "{:>5} {:>4} {:>8} {:>8} | {:>8} | {:>7} {:>7} {:>8} | {:>7} {:>7} {:>8} | {:>6}",
        "nodes",
        "op",
        "routing",
        "sessions",
        "ops/s",
        "get p50",
        "p99",
        "p99.9",
        "put p50",
        "p99",
        "p99.9",
        "errors"
    );
    for r in &rows {
        println!(
            "{:>5} {:>4} {:>8} {:>8} | {:>8.0} | {:>7} {:>7} {:>8} | {:>7} {:>7} {:>8} | {:>6}{}",
            r.nodes,
            r.op,
            r.routing(),
            if r.sessions { "on" } else { "off" },
            r.ops_s,
            cell(r.get[0]),
            cell(r.get[1]),
            cell(r.get[2]),
            cell(r.put[0]),
            cell(r.put[1]),
            cell(r.put[2]),
            r.errors,
            if r.notes.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.notes)
            }
        );
    }

    let dir = plot::plots_dir();
    let names = |of: &[&Row]| -> Vec<String> { of.iter().map(|r| r.label()).collect() };
    let series = |of: &[&Row], pick: fn(&Row) -> [f64; 3]| -> Vec<(String, Vec<f64>)> {
        ["p50", "p99", "p99.9"]
            .iter()
            .enumerate()
            .map(|(i, name)| (name.to_string(), of.iter().map(|r| pick(r)[i]).collect()))
            .collect()
    };
    for op in ["get", "put", "mix"] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.op == op).collect();
        let groups = names(&of);
        let gets = series(&of, |r| r.get);
        let puts = series(&of, |r| r.put);
        let get_title = format!("get latency, --op {op}: {clients} clients, {secs} s per bar");
        let put_title = format!("put latency, --op {op}: {clients} clients, {secs} s per bar");
        let panel = |title, series| Bars {
            title,
            y_label: "latency, ms (log)",
            groups: &groups,
            series,
            log_y: true,
        };
        let panels = match op {
            "get" => vec![panel(&get_title, &gets)],
            "put" => vec![panel(&put_title, &puts)],
            _ => vec![panel(&get_title, &gets), panel(&put_title, &puts)],
        };
        let path = dir.join(format!("latency-{op}.svg"));
        plot::bar_panels(&path, &panels).expect("write the plot");
        println!("plot: {}", path.display());
    }
}
