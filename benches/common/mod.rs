//! What the benchmarks that run a real ring share: the release-built node binary (and kvctl),
//! a ring of child processes in a temporary directory, and waiting for it to form.

use kvctl::Client;
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
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", bin, "-p", package])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building {bin} failed");
    dir.join(bin)
}

fn free_port() -> u16 {
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
    let dir = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..n {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &addr])
            .args(args)
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
    panic!("the ring did not form");
}
