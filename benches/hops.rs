//! Lookup path length against the Chord paper (SIGCOMM 2001 §6.3, Fig. 10): in a stabilized
//! ring of N nodes a lookup takes about ½·log2 N hops.
//!
//! Runs the real protocol code in the deterministic simulator, grows rings of several sizes,
//! waits until every pointer is exact, then looks up random keys from random nodes and prints a
//! table: mean, 1st and 99th percentile hops next to ½·log2 N. `cargo bench --bench hops`;
//! `HOPS_SIZES=64,4096` picks other sizes, `HOPS_SUCCESSORS` the successor list length.

use chordkv_node::message::{Request, Response};
use chordkv_node::node::Options;
use chordkv_node::ring;
use chordkv_node::testing::sim::{Sim, SimOptions};

fn main() {
    let sizes: Vec<usize> = std::env::var("HOPS_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 64, 256, 1024]);
    let successors: usize = std::env::var("HOPS_SUCCESSORS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let lookups = 4000;
    println!("lookup hops, successor list r = {successors}, {lookups} lookups per ring");
    println!(
        "{:>6}  {:>8}  {:>6}  {:>4}  {:>4}  {:>10}",
        "nodes", "½·log2N", "mean", "p1", "p99", "settled at"
    );
    for n in sizes {
        let mut sim = Sim::new(SimOptions {
            seed: 42,
            node: Options {
                ring: ring::Options {
                    successors,
                    ..ring::Options::default()
                },
                ..Options::default()
            },
            ..SimOptions::default()
        });
        sim.add_node(None);
        for _ in 1..n {
            sim.add_node(Some(0));
            sim.run_for(20);
        }
        let settled = sim.run_until(600_000, |s| {
            s.now() % 1000 == 0 && s.ring_errors(true).is_empty()
        });
        if !settled {
            println!("{n:>6}  ring did not settle within 600 s of simulated time");
            continue;
        }
        let at = sim.now();
        let tokens: Vec<_> = (0..lookups)
            .map(|k| {
                let key = format!("bench-key-{k}").into_bytes();
                sim.submit((k * 7919) % n, Request::Lookup { key })
            })
            .collect();
        sim.run_for(5_000);
        let mut hops: Vec<u32> = tokens
            .into_iter()
            .filter_map(|t| match sim.response(t) {
                Some(Ok(Response::Lookup(info))) => Some(info.hops),
                _ => None,
            })
            .collect();
        hops.sort_unstable();
        let mean = hops.iter().map(|&h| f64::from(h)).sum::<f64>() / hops.len().max(1) as f64;
        let pct = |p: f64| {
            hops.get(((hops.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{n:>6}  {:>8.2}  {mean:>6.2}  {:>4}  {:>4}  {:>8} ms{}",
            0.5 * (n as f64).log2(),
            pct(0.01),
            pct(0.99),
            at,
            if hops.len() < lookups {
                "  (some lookups unanswered)"
            } else {
                ""
            }
        );
    }
}
