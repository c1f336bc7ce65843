//! What the benchmarks that run a real ring share: the release-built node binary (and kvctl),
//! a ring of child processes in a temporary directory, waiting for it to form, driving
//! `kvctl --json bench` against it, and drawing plots ([`plot`]).

#[allow(dead_code)] // not every bench reads every knob
pub mod env;
#[allow(dead_code)] // not every bench draws
pub mod plot;

use kvctl::Client;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Builds `chordkv-node` in release and returns its path (beside the benchmark's own
/// directory: target/release/deps/NAME-xxxx -> target/release/chordkv-node). `CHORDKV_NODE_BIN`
/// names a binary to run instead, unbuilt: how to compare two builds on the same machine.
pub fn node_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHORDKV_NODE_BIN") {
        return PathBuf::from(bin);
    }
    release_binary("chordkv-node", "chordkv-node")
}

/// Builds binary `bin` of package `package` in release and returns its path.
#[allow(dead_code)] // not every bench uses every binary
pub fn release_binary(bin: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let status = chordkv_node::testing::cargo::command(env!("CARGO"))
        .args(["build", "--release", "--bin", bin, "-p", package])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building {bin} failed");
    dir.join(bin)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Node processes, killed when dropped.
pub struct Ring {
    children: Vec<Child>,
    /// Their addresses, the first one's ring joined by the others.
    pub addrs: Vec<String>,
    dir: tempfile::TempDir,
}

#[allow(dead_code)] // not every bench looks inside its nodes
impl Ring {
    /// The nodes' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Panics if a node has exited (a flag it refused, a port taken): waiting for the ring
    /// would only time out.
    pub fn assert_running(&mut self) {
        if let Some(why) = self.exited() {
            panic!("{why}");
        }
    }

    /// Which node has exited and how, if one has.
    pub fn exited(&mut self) -> Option<String> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(format!("node {i} ({}) exited: {status}", self.addrs[i]));
            }
        }
        None
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts three nodes of `bin` with `args` besides their address, data directory and
/// bootstrap, each joining through the first.
#[allow(dead_code)] // not every bench runs three nodes
pub fn start_ring(bin: &Path, args: &[&str]) -> Ring {
    start_nodes(bin, 3, args)
}

/// [`start_ring`] with `n` nodes.
pub fn start_nodes(bin: &Path, n: usize, args: &[&str]) -> Ring {
    start_nodes_each(bin, n, args, |_| Vec::new())
}

/// [`start_nodes`], node `i` also given `each(i)`.
pub fn start_nodes_each(
    bin: &Path,
    n: usize,
    args: &[&str],
    each: impl Fn(usize) -> Vec<String>,
) -> Ring {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..n {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &addr])
            .args(args)
            .args(each(i))
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{i}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(first) = addrs.first() {
            cmd.args(["--bootstrap", first]);
        }
        children.push(cmd.spawn().expect("start chordkv-node"));
        addrs.push(addr);
    }
    Ring {
        children,
        addrs,
        dir,
    }
}

/// Waits (at most 30 s) until the ring through `addr` is consistent, of three nodes, each
/// keeping three copies of its keys.
#[allow(dead_code)] // not every bench runs three nodes
pub async fn wait_for_ring(addr: &str) {
    wait_for_nodes(addr, 3, 3).await;
}

/// Waits (at most 30 s) until the ring through `addr` is consistent, of `n` nodes, each
/// keeping `replicas` copies of its keys.
pub async fn wait_for_nodes(addr: &str, n: usize, replicas: u32) {
    wait_for_nodes_within(addr, n, replicas, Duration::from_secs(30)).await;
}

/// [`wait_for_nodes`], waiting at most `limit`.
pub async fn wait_for_nodes_within(addr: &str, n: usize, replicas: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(c) = Client::connect(addr, Duration::from_secs(1)).await {
            if let Ok(view) = c.ring_view().await {
                let full = view
                    .nodes
                    .iter()
                    .filter_map(|m| m.status())
                    .all(|s| s.replicas == replicas);
                if view.is_consistent() && view.nodes.len() == n && full {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ring did not form within {limit:?}");
}

/// The arguments of a `kvctl bench` run of `op` by `clients` clients over `keys` keys, 16-byte
/// values, for `secs` seconds; callers add the routing and what else they need.
#[allow(dead_code)] // not every bench runs kvctl bench
pub fn bench_args(op: &str, clients: u64, keys: u64, secs: u64) -> Vec<String> {
    let (clients, keys, secs) = (clients.to_string(), keys.to_string(), secs.to_string());
    [
        "--op",
        op,
        "--clients",
        &clients,
        "--keys",
        &keys,
        "--value-size",
        "16",
        "--duration",
        &secs,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `kvctl --json bench ARGS` against `node` and returns its report.
#[allow(dead_code)] // not every bench runs kvctl bench
pub fn bench(kvctl: &Path, node: &str, args: &[String]) -> Value {
    let out = Command::new(kvctl)
        .args(["--node", node, "--json", "--timeout", "12", "bench"])
        .args(args)
        .output()
        .expect("kvctl runs");
    assert!(
        out.status.success(),
        "kvctl bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kvctl bench prints JSON")
}

/// A number of a JSON report, NaN if it is missing or not a number.
#[allow(dead_code)] // not every bench reads reports
pub fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}
