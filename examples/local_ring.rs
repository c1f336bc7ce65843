//! Three chordkv nodes in one process, on loopback ports and temporary data directories, used
//! through the client library: the smallest complete tour of the system.
//!
//! `cargo run --example local_ring`

use chordkv_node::server::{self, Config};
use kvctl::Client;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut config = Config::new(addr, dir.path().join(format!("node{i}")));
        config.bootstrap = addrs.first().copied();
        config.node.ring.stabilize_interval = 100;
        let (stop, stopped) = oneshot::channel::<()>();
        tasks.push(tokio::spawn(server::run(config, listener, async {
            let _ = stopped.await;
        })));
        stops.push(stop);
        addrs.push(addr);
        println!("node {i} listening on {addr}");
    }

    let timeout = Duration::from_secs(5);
    let first = Client::connect(&addrs[0].to_string(), timeout).await?;
    // Wait until the three nodes form one consistent ring.
    let view = loop {
        let view = first.ring_view().await?;
        if view.is_consistent() && view.nodes.len() == 3 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for member in &view.nodes {
        println!("ring member {}", member.node());
    }

    first.put(b"greeting", b"hello").await?;
    let last = Client::connect(&addrs[2].to_string(), timeout).await?;
    let value = last.get(b"greeting").await?.unwrap_or_default();
    println!(
        "read back through another node: {}",
        String::from_utf8_lossy(&value)
    );
    let info = last.lookup(b"greeting").await?;
    println!("\"greeting\" lives on {} ({} hops)", info.owner, info.hops);

    // Leave gracefully, last node first; each hands its keys to its successor.
    for (stop, task) in stops.into_iter().zip(tasks).rev() {
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}
