//! What a session costs: get and put latency on a real three-node ring (N = 3, W = 1, R = 1),
//! with a session and without, with the replicas in sync and with one replica lagging.
//!
//! Starts release-built `chordkv-node` processes on loopback ports in a temporary directory.
//! Picks `SESSIONS_KEYS` keys (default 32) that node 0 owns and talks to node 0 only, so every
//! request is coordinated where it lands. Each round runs `SESSIONS_OPS` operations (default
//! 200, alternately a get and a put, over the keys in turn) once with a session client and once
//! with a plain one, the order alternating between rounds, so machine noise hits both;
//! `SESSIONS_ROUNDS` rounds (default 10) per setup; `SESSIONS_VALUE_BYTES` pads the values (to
//! compare a session's dependencies with the same number of bytes of value). Prints p50 and p99 per operation and the
//! ratio session/plain; nothing is asserted.
//!
//! Setups: *in sync*, every copy up to date; *lagging*, node 0 drops every request it sends to
//! node 1 (`Request::Block`), so node 1's copies of node 0's keys fall behind (and node 0 stops
//! counting node 1 among its replicas once its heartbeats go unanswered). With W = 1 and R = 1
//! a write is acknowledged by the owner alone and a read merges the owner's copy alone, so a
//! session read is served at once whenever the owner's state meets its floor: the lagging copy
//! costs the session only if the owner changes. The session's size and the dependencies one of
//! its writes carries are printed too: with W = 1 nothing is acknowledged by all copies, so
//! every key it touched stays an unstable dependency.
//!
//! `cargo bench --bench sessions`.

use chordkv_node::message::{Request, Response};
mod common;

use common::{node_binary, start_ring, wait_for_ring};
use kvctl::{Client, Session};
use std::time::{Duration, Instant};

/// A count from env var `name`, else `default`.
fn env_or(name: &str, default: usize) -> usize {
    common::env::env_or(name, default as u64) as usize
}

/// Latencies of one (setup, variant, operation), in microseconds.
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn quantile(&mut self, q: f64) -> f64 {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

/// Get and put samples of one variant.
#[derive(Default)]
struct Variant {
    get: Samples,
    put: Samples,
    errors: usize,
}

/// Runs `ops` operations through `client` over `keys`, alternately a get and a put.
async fn run(client: &Client, keys: &[Vec<u8>], ops: usize, round: usize, into: &mut Variant) {
    for i in 0..ops {
        let key = &keys[(i / 2) % keys.len()];
        let start = Instant::now();
        let ok = if i % 2 == 0 {
            client.get(key).await.is_ok()
        } else {
            let mut value = format!("v-{round}-{i}").into_bytes();
            value.resize(value.len().max(env_or("SESSIONS_VALUE_BYTES", 0)), b'.');
            client.put(key, &value).await.is_ok()
        };
        let us = start.elapsed().as_micros() as u64;
        if !ok {
            into.errors += 1;
        } else if i % 2 == 0 {
            into.get.0.push(us);
        } else {
            into.put.0.push(us);
        }
    }
}

/// One setup: both variants, interleaved round by round; prints its rows.
async fn setup(name: &str, plain: &Client, session: &Client, keys: &[Vec<u8>]) {
    let rounds = env_or("SESSIONS_ROUNDS", 10);
    let ops = env_or("SESSIONS_OPS", 200);
    let mut with = Variant::default();
    let mut without = Variant::default();
    for round in 0..rounds {
        if round % 2 == 0 {
            run(session, keys, ops, round, &mut with).await;
            run(plain, keys, ops, round, &mut without).await;
        } else {
            run(plain, keys, ops, round, &mut without).await;
            run(session, keys, ops, round, &mut with).await;
        }
    }
    for (op, w, p) in [
        ("get", &mut with.get, &mut without.get),
        ("put", &mut with.put, &mut without.put),
    ] {
        let (w50, w99, p50, p99) = (
            w.quantile(0.5),
            w.quantile(0.99),
            p.quantile(0.5),
            p.quantile(0.99),
        );
        println!(
            "{name:<9} {op:<4} {p50:>9.3} {w50:>9.3} {:>6.2}   {p99:>9.3} {w99:>9.3} {:>6.2}",
            w50 / p50,
            w99 / p99
        );
    }
    if with.errors + without.errors > 0 {
        println!(
            "{name:<9} errors: {} with a session, {} without",
            with.errors, without.errors
        );
    }
    if let Some(s) = session.session() {
        let deps = s
            .for_write(&keys[0])
            .map(|w| format!("{} deps, {} bytes", w.deps.len(), w.deps.encoded_len()))
            .unwrap_or_else(|e| e.to_string());
        println!(
            "{name:<9} session: {} keys, {} unstable, {} bytes saved; a write carries {deps}",
            s.len(),
            s.unstable(),
            s.to_bytes().len()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = node_binary();
    let ring = start_ring(
        &bin,
        &[
            "--stabilize-ms",
            "100",
            "--heartbeat-ms",
            "200",
            "--write-quorum",
            "1",
            "--read-quorum",
            "1",
            "--allow-fault-injection",
        ],
    );
    wait_for_ring(&ring.addrs[0]).await;
    let timeout = Duration::from_secs(5);
    let plain = Client::connect(&ring.addrs[0], timeout)
        .await
        .expect("connect");
    let session = Client::connect(&ring.addrs[0], timeout)
        .await
        .expect("connect")
        .with_session(Session::new());
    let me = plain.status().await.expect("status").node.addr;

    // Keys node 0 owns, written once without a session.
    let want = env_or("SESSIONS_KEYS", 32);
    let mut keys = Vec::new();
    for i in 0.. {
        if keys.len() == want {
            break;
        }
        let key = format!("bench/{i}").into_bytes();
        if plain.lookup(&key).await.expect("lookup").owner.addr == me {
            plain.put(&key, b"initial").await.expect("preload");
            keys.push(key);
        }
    }

    println!(
        "get/put latency, ms: 3 nodes, N=3 W=1 R=1, {} keys owned by node 0, one client each",
        keys.len()
    );
    println!(
        "{:<9} {:<4} {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}",
        "setup", "op", "p50 plain", "p50 sess", "ratio", "p99 plain", "p99 sess", "ratio"
    );
    setup("in sync", &plain, &session, &keys).await;

    let lagging: std::net::SocketAddr = ring.addrs[1].parse().expect("an address");
    match plain
        .call(Request::Block {
            peers: vec![lagging],
        })
        .await
    {
        Ok(Response::Ack) => {}
        other => panic!("node 0 did not take the block: {other:?}"),
    }
    // Wait (bounded) until node 0 has given up on node 1, so the lagging setup measures a
    // settled state rather than the detector's timeouts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = plain.status().await.expect("status");
        if status.succs.iter().all(|s| s.addr != lagging) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup("lagging", &plain, &session, &keys).await;
}
