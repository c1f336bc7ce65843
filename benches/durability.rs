//! Acknowledged writes per second on a real three-node ring (N = 3, W = 2), by durability mode:
//! group commit (the default), a flush per write, and relaxed (acknowledge before flushing).
//!
//! Starts release-built `chordkv-node` processes on loopback ports in a temporary directory,
//! drives them with `DURABILITY_WRITERS` concurrent writers (default 64) for
//! `DURABILITY_SECS` seconds per run (default 4), three runs per mode, and prints the median
//! and its ratio to the per-write mode, and the latency percentiles of the acknowledged writes
//! of the median run. `cargo bench --bench durability`.

mod common;

use common::{node_binary, start_ring, wait_for_ring};
use kvctl::{Client, VersionVector};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One run: acknowledged writes per second, and each acknowledged write's latency in µs, sorted.
async fn measure(addrs: &[String], writers: usize, secs: u64, run: usize) -> (f64, Vec<u64>) {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let addr = addrs[w % addrs.len()].clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&addr, Duration::from_secs(5))
                .await
                .expect("connect");
            let mut n = 0u64;
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let key = format!("bench-{run}-{w}-{n}");
                n += 1;
                let began = Instant::now();
                if client
                    .write(key.as_bytes(), b"0123456789abcdef", &VersionVector::new())
                    .await
                    .is_ok()
                {
                    latencies.push(began.elapsed().as_micros() as u64);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    (
        acked.load(Ordering::Relaxed) as f64 / secs as f64,
        latencies,
    )
}

/// The `p`-th quantile of sorted `values`, in milliseconds.
fn quantile_ms(values: &[u64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i] as f64 / 1000.0
}

fn main() {
    let writers: usize = std::env::var("DURABILITY_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let secs: u64 = std::env::var("DURABILITY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let bin = node_binary();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "acknowledged writes/s, 3 nodes, N=3 W=2, {writers} writers, {secs} s per run, median of 3"
    );
    let mut results = Vec::new();
    for mode in ["per-write", "group", "relaxed"] {
        let ring = start_ring(&bin, &["--durability", mode, "--stabilize-ms", "100"]);
        let mut runs: Vec<(f64, Vec<u64>)> = rt.block_on(async {
            wait_for_ring(&ring.addrs[0]).await;
            let mut runs = Vec::new();
            for run in 0..3 {
                runs.push(measure(&ring.addrs, writers, secs, run).await);
            }
            runs
        });
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let median = runs.swap_remove(1);
        results.push((mode, median, rates));
        drop(ring);
    }
    let base = results[0].1.0.max(1.0);
    println!(
        "{:>10}  {:>10}  {:>8}  {:>7}  {:>7}  {:>8}  runs",
        "mode", "median/s", "vs per-write", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for (mode, (median, latencies), rates) in &results {
        println!(
            "{mode:>10}  {median:>10.0}  {:>11.1}x  {:>7.2}  {:>7.2}  {:>8.2}  {rates:.0?}",
            median / base,
            quantile_ms(latencies, 0.5),
            quantile_ms(latencies, 0.99),
            quantile_ms(latencies, 0.999),
        );
    }
}
