//! `kvctl bench` against a real ring: three chordkv nodes (the node library's server, on sled
//! in a temporary directory) run in this test process on loopback ports, and the real kvctl
//! binary benches them briefly. The JSON report must parse, its counts must add up, and a
//! healthy ring must give no errors.

use chordkv_node::server::{self, Config};
use kvctl::Client;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Starts three nodes on their own runtime thread and waits until their ring is consistent.
fn ring(dir: &std::path::Path) -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let mut addrs = Vec::new();
            for i in 0..3 {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                let mut config = Config::new(addr, dir.join(format!("n{i}")));
                config.bootstrap = addrs.first().copied();
                config.node.ring.stabilize_interval = 100;
                tokio::spawn(server::run(config, listener, std::future::pending()));
                addrs.push(addr);
            }
            tx.send(addrs).expect("send addrs");
            std::future::pending::<()>().await;
        });
    });
    let addrs: Vec<SocketAddr> = rx.recv().expect("addrs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(60);
    runtime.block_on(async {
        loop {
            let walked = async {
                Client::connect(&addrs[0].to_string(), Duration::from_secs(2))
                    .await?
                    .ring_view()
                    .await
            };
            if let Ok(view) = walked.await {
                let full = view
                    .nodes
                    .iter()
                    .filter_map(|m| m.status())
                    .all(|s| s.replicas == 3);
                if view.is_consistent() && view.nodes.len() == 3 && full {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the ring did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    addrs
}

fn bench(node: SocketAddr, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--node", &node.to_string(), "--json", "bench"])
        .args(args)
        .env_remove("KVCTL_NODE")
        .output()
        .expect("kvctl runs");
    assert!(
        out.status.success(),
        "kvctl bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object and nothing else: no progress bar without a terminal.
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn bench_reports_add_up_on_a_healthy_ring() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addrs = ring(dir.path());

    // Load 500 keys, then a fixed number of mixed requests, direct.
    let direct = bench(
        addrs[0],
        &[
            "--direct",
            "--op",
            "mix",
            "--clients",
            "16",
            "--keys",
            "500",
            "--load",
            "--requests",
            "2000",
            "--value-size",
            "32",
        ],
    );
    assert_eq!(n(&direct["requests"]), 2000, "{direct:#}");
    assert_eq!(
        n(&direct["get"]["count"]) + n(&direct["put"]["count"]),
        2000
    );
    assert_eq!(
        n(&direct["ok"]),
        2000,
        "no errors on a healthy ring: {direct:#}"
    );
    assert!(direct["errors"].as_object().expect("errors").is_empty());
    assert_eq!(n(&direct["load"]["keys"]), 500);
    assert_eq!(n(&direct["load"]["errors"]), 0);
    // Every key was loaded, so every get found a value.
    assert_eq!(n(&direct["get"]["missing"]), 0, "{direct:#}");
    assert!(
        n(&direct["get"]["count"]) > n(&direct["put"]["count"]),
        "a 0.9 mix"
    );
    let share = direct["direct_share"].as_f64().expect("a share");
    assert!(share >= 0.99, "{direct:#}");
    let route = &direct["route"];
    assert_eq!(n(&route["direct"]), (share * 2000.0).round() as u64);
    let l = &direct["get"]["latency_ms"];
    let p = |k: &str| l[k].as_f64().expect("a latency");
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p99_9"));
    assert!(p("p99_9") <= p("max") && p("p50") > 0.0, "{l}");

    // Through the nodes, for a short time, puts only, on the keys loaded above.
    let via = bench(
        addrs[1],
        &[
            "--via-node",
            "--op",
            "put",
            "--clients",
            "8",
            "--keys",
            "500",
            "--duration",
            "1",
        ],
    );
    assert_eq!(via["routing"], "via-node");
    assert_eq!(n(&via["get"]["count"]), 0);
    assert!(n(&via["put"]["ok"]) > 0, "{via:#}");
    assert_eq!(n(&via["ok"]), n(&via["requests"]), "{via:#}");
    assert!(via["direct_share"].is_null());
    assert!(via["secs"].as_f64().expect("secs") >= 1.0);
}
