//! What the benchmarks that run a real ring share: the release-built node binary, a
//! three-node ring of child processes in a temporary directory, and waiting for it to form.

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
    let exe = std::env::current_exe().expect("bench path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--bin",
            "chordkv-node",
            "-p",
            "chordkv-node",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building chordkv-node failed");
    dir.join("chordkv-node")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Three node processes, killed when dropped.
pub struct Ring {
    children: Vec<Child>,
    /// Their addresses, the first one's ring joined by the others.
    pub addrs: Vec<String>,
    _dir: tempfile::TempDir,
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
pub fn start_ring(bin: &Path, args: &[&str]) -> Ring {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..3 {
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
        _dir: dir,
    }
}

/// Waits (at most 30 s) until the ring through `addr` is consistent, of three nodes, each
/// keeping three copies of its keys.
pub async fn wait_for_ring(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(c) = Client::connect(addr, Duration::from_secs(1)).await {
            if let Ok(view) = c.ring_view().await {
                let full = view
                    .nodes
                    .iter()
                    .filter_map(|m| m.status())
                    .all(|s| s.replicas == 3);
                if view.is_consistent() && view.nodes.len() == 3 && full {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ring did not form");
}
