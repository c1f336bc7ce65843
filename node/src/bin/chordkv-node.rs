//! `chordkv-node`: run one node of a chordkv ring.
//!
//! ```text
//! chordkv-node                                            # a new ring on 127.0.0.1:7000
//! chordkv-node --listen 127.0.0.1:7001 --bootstrap 127.0.0.1:7000
//! ```
//! Ctrl-C or SIGTERM leaves the ring gracefully (keys go to the successor first).
//!
//! On loopback a node runs open: no cluster secret, no client tokens, plain TCP. On any other
//! address it refuses to start without `--cluster-secret-file` and `--tokens-file` unless told
//! `--insecure`; see the README's "Security" section.

use chordkv_node::auth::{Gate, Secret, Tokens};
use chordkv_node::id::Id;
use chordkv_node::node::Options;
use chordkv_node::ring::detector::DetectorOptions;
use chordkv_node::server::{self, Config, Durability, Security};
use chordkv_node::tls::{ClientTls, ServerTls};
use chordkv_node::wire::{HARD_MAX_FRAME, Limits};
use chordkv_node::{kv, ring};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// One node of a chordkv ring: a Chord ring member with sled storage.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000", env = "CHORDKV_LISTEN")]
    listen: SocketAddr,
    /// Address peers and clients use to reach this node (default: --listen). Its SHA-1 is the
    /// node's id on first start.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Any member of an existing ring; omit to start a new ring.
    #[arg(long, env = "CHORDKV_BOOTSTRAP")]
    bootstrap: Option<SocketAddr>,
    /// Where the node keeps its sled database and id [default: $XDG_DATA_HOME/chordkv/HOST-PORT,
    /// else ~/.local/share/chordkv/HOST-PORT].
    #[arg(long, env = "CHORDKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node id as 40 hex digits, instead of the SHA-1 of the advertised address (first start only).
    #[arg(long)]
    node_id: Option<Id>,
    /// Successor list length r.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    successors: u16,
    /// Stabilization interval, ms.
    #[arg(long, default_value_t = 500)]
    stabilize_ms: u64,
    /// Interval between finger refreshes, ms.
    #[arg(long, default_value_t = 100)]
    fix_fingers_ms: u64,
    /// Heartbeat interval: how often the predecessor and each successor are probed, ms.
    #[arg(long, default_value_t = 500, alias = "check-pred-ms")]
    heartbeat_ms: u64,
    /// How long a probe may go unanswered before the neighbour is suspected, ms (grows for a
    /// neighbour that was suspected wrongly).
    #[arg(long, default_value_t = 1000)]
    heartbeat_timeout_ms: u64,
    /// Anti-entropy interval: how often a node compares a range with one replica, ms.
    #[arg(long, default_value_t = 1000)]
    sync_ms: u64,
    /// How often a node looks itself up through a node it lost (merging rings after a
    /// partition heals), ms.
    #[arg(long, default_value_t = 5000)]
    merge_ms: u64,
    /// How long a deleted key's tombstone must stay unchanged on every replica before it is
    /// collected, ms; 0 keeps tombstones forever. Must exceed the longest time a node may be
    /// down or cut off and come back with its data, or a value the tombstone replaced may
    /// reappear.
    #[arg(long, default_value_t = 3_600_000)]
    tombstone_grace_ms: u64,
    /// Copies of every key (N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    replicas: u16,
    /// Copies stored before a write is acknowledged (W), 1..=N; default a majority of N (2 of
    /// 3). A floor: a write that cannot reach W copies fails, it is never acknowledged with fewer.
    /// So a node alone refuses writes unless run with `--replicas 1`.
    #[arg(long)]
    write_quorum: Option<u16>,
    /// Copies merged before a read answers (R), 1..=N; default a majority of N. A floor, like W.
    #[arg(long)]
    read_quorum: Option<u16>,
    /// How long to wait for a peer's answer, ms.
    #[arg(long, default_value_t = 1000)]
    rpc_timeout_ms: u64,
    /// How long a client request may take, retries included, ms.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Largest key, bytes.
    #[arg(long, default_value_t = 4 << 10)]
    max_key_bytes: usize,
    /// Largest value, bytes. A message carries at most 8 MiB, or the largest key and value
    /// plus 64 KiB if that is more (the frame bound), and a key's whole state (its concurrent
    /// versions, siblings, with their version vectors) at most the frame bound less 64 KiB: a
    /// write that would leave the state larger is refused. Resolve the siblings by writing with
    /// the context of a read (`kvctl put --context`), or delete the key.
    #[arg(long, default_value_t = 4 << 20)]
    max_value_bytes: usize,
    /// Most open client connections. When all are taken, a new one replaces the one idle
    /// longest (if idle for a second or more), else it is refused.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most open connections from other nodes, a budget apart from the clients'.
    #[arg(long, default_value_t = 256)]
    max_peer_connections: usize,
    /// Close a connection that sends nothing and is answered nothing for this long, ms.
    #[arg(long, default_value_t = 300_000)]
    idle_timeout_ms: u64,
    /// File holding the cluster secret every node of the ring shares (make one with `openssl
    /// rand -hex 32`). Without one (and without $CHORDKV_CLUSTER_SECRET), any connection that
    /// says it is a node is one.
    #[arg(long, env = "CHORDKV_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// File of client tokens, one `read-write|read-only NAME:SECRET` per line. Without one, every
    /// client may read and write.
    #[arg(long, env = "CHORDKV_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// PEM certificate (chain) to speak TLS with, to peers and clients; needs --tls-key and
    /// --tls-ca.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the ring's node certificates: peers are dialled over TLS
    /// and must present one for their address.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Listen on a non-loopback address without a cluster secret or without client tokens.
    /// Anyone who reaches the port can then join the ring, or read and write every key.
    #[arg(long)]
    insecure: bool,
    /// The most memory, in MiB, sled's page cache may take. Gets of keys whose pages are not
    /// cached are several times slower.
    #[arg(long, default_value_t = chordkv_node::storage::DEFAULT_CACHE_BYTES >> 20)]
    cache_mb: u64,
    /// When writes are acknowledged: `group` (after a flush shared by concurrent writes),
    /// `per-write` (after a flush of its own), or `relaxed` (before the flush: a crash of this
    /// process can lose the last ~500 ms of acknowledged writes on this node).
    #[arg(long, default_value = "group", value_parser = ["group", "per-write", "relaxed"])]
    durability: String,
    /// Honour fault-injection requests (a simulated partition) from any client. For tests only.
    #[arg(long, hide = true)]
    allow_fault_injection: bool,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Also speak the Redis protocol (RESP2/RESP3) on this address (e.g. 127.0.0.1:6380), for
    /// redis-cli, redis-benchmark and Redis client libraries. It speaks no TLS: a non-loopback
    /// address needs --insecure.
    #[arg(long, env = "CHORDKV_RESP")]
    resp: Option<SocketAddr>,
    /// Let FLUSHALL and FLUSHDB on the RESP port delete every key of the ring.
    #[arg(long, requires = "resp")]
    resp_flushall: bool,
    /// Most open RESP connections at once; one more is refused.
    #[arg(long, default_value_t = 10_000)]
    resp_max_connections: usize,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,chordkv_node=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chordkv-node: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let advertise = args.advertise.unwrap_or(args.listen);
    if advertise.ip().is_unspecified() {
        return Err(format!(
            "cannot advertise {advertise}: peers need a reachable address; pass --advertise HOST:PORT"
        ));
    }
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => default_data_dir(advertise)?,
    };
    let mut config = Config::new(advertise, data_dir);
    config.bootstrap = args.bootstrap;
    config.node_id = args.node_id;
    config.max_connections = args.max_connections.max(1);
    config.max_peer_connections = args.max_peer_connections.max(1);
    config.idle_timeout = Duration::from_millis(args.idle_timeout_ms.max(1));
    config.security = security(&args)?;
    config.cache_bytes = args.cache_mb.max(1) << 20;
    config.allow_fault_injection = args.allow_fault_injection;
    if let Some(listen) = args.resp {
        if !listen.ip().is_loopback() && !args.insecure {
            return Err(format!(
                "refusing to serve RESP on {listen}: the Redis port speaks no TLS, so passwords \
                 and data would cross the network in the clear; use a loopback address (and a \
                 TLS proxy), or pass --insecure"
            ));
        }
        let mut resp = chordkv_node::resp::Config::new(listen);
        resp.allow_flushall = args.resp_flushall;
        resp.max_connections = args.resp_max_connections.max(1);
        config.resp = Some(resp);
    }
    config.durability = match args.durability.as_str() {
        "per-write" => Durability::PerWrite,
        "relaxed" => Durability::Relaxed,
        _ => Durability::Group,
    };
    let heartbeat_ms = args.heartbeat_ms.max(1);
    let defaults = kv::Options::with_replicas(usize::from(args.replicas));
    config.node = Options {
        ring: ring::Options {
            successors: usize::from(args.successors),
            stabilize_interval: args.stabilize_ms.max(1),
            fix_fingers_interval: args.fix_fingers_ms.max(1),
            detector: DetectorOptions {
                interval: heartbeat_ms,
                initial_timeout: args.heartbeat_timeout_ms.max(1),
                max_timeout: (args.heartbeat_timeout_ms.max(1) * 10).max(10_000),
                ..DetectorOptions::default()
            },
            merge_interval: args.merge_ms.max(1),
            rpc_timeout: args.rpc_timeout_ms.max(1),
            ..ring::Options::default()
        },
        kv: kv::Options {
            sync_interval: args.sync_ms.max(1),
            // Hinted writes go out at the pace of the heartbeats that notice a replica is back.
            hint_interval: heartbeat_ms,
            tombstone_grace: (args.tombstone_grace_ms > 0).then_some(args.tombstone_grace_ms),
            write_quorum: args.write_quorum.map_or(defaults.write_quorum, usize::from),
            read_quorum: args.read_quorum.map_or(defaults.read_quorum, usize::from),
            request_timeout: args.request_timeout_ms.max(1),
            ..defaults
        },
        seed: rand_seed(),
    };
    config.node.kv.validate().map_err(|e| e.to_string())?;
    // A frame must carry the largest key and value plus the message around them.
    let max_frame = (args.max_key_bytes + args.max_value_bytes + (64 << 10))
        .clamp(Limits::default().max_frame, HARD_MAX_FRAME);
    config.limits = Limits {
        max_key: args.max_key_bytes,
        max_value: args.max_value_bytes,
        max_frame,
    };
    config.limits.validate().map_err(|e| e.to_string())?;
    // Every state fits a frame, and batches of them stay well under it.
    config.node.kv.versions.max_state_bytes = config.limits.max_state();
    config.node.kv.batch_bytes = max_frame / 4;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        if let Some(addr) = args.metrics {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        server::run(config, listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })?;
    // Give the last log lines a moment; nothing else is pending.
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// The cluster secret, tokens and TLS of the flags; refuses an exposed node without them.
fn security(args: &Args) -> Result<Security, String> {
    let text = |e: chordkv_node::Error| e.to_string();
    let cluster = match (
        &args.cluster_secret_file,
        std::env::var("CHORDKV_CLUSTER_SECRET"),
    ) {
        (Some(path), _) => Some(Secret::from_file(path).map_err(text)?),
        (None, Ok(secret)) => Some(
            Secret::new(secret.trim().as_bytes())
                .map_err(|e| format!("$CHORDKV_CLUSTER_SECRET: {e}"))?,
        ),
        (None, Err(_)) => None,
    };
    let tokens = match &args.tokens_file {
        Some(path) => Some(Arc::new(Tokens::from_file(path).map_err(text)?)),
        None => None,
    };
    let tls_server = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key).map_err(text)?),
        _ => None,
    };
    let tls_client = match &args.tls_ca {
        Some(ca) => Some(ClientTls::from_ca_file(ca).map_err(text)?),
        None => None,
    };
    let exposed = !args.listen.ip().is_loopback();
    let mut open = Vec::new();
    if cluster.is_none() {
        open.push(
            "any connection that says it is a node is trusted as one (no --cluster-secret-file)",
        );
    }
    if tokens.is_none() {
        open.push("every client may read and write (no --tokens-file)");
    }
    if exposed && !open.is_empty() && !args.insecure {
        return Err(format!(
            "refusing to listen on {} without credentials: {}; pass them, or --insecure",
            args.listen,
            open.join(", and ")
        ));
    }
    for what in &open {
        let scope = if exposed {
            "anyone on the network"
        } else {
            "loopback only"
        };
        tracing::warn!(listen = %args.listen, "{what}: {scope}");
    }
    if let Some(tokens) = &tokens {
        tracing::info!(tokens = tokens.len(), "clients must prove a token");
    }
    if tls_server.is_none() && exposed {
        tracing::warn!("no TLS (--tls-cert): traffic crosses the network in the clear");
    }
    Ok(Security {
        gate: Gate { cluster, tokens },
        tls_server,
        tls_client,
    })
}

/// `$XDG_DATA_HOME/chordkv/HOST-PORT`, else `~/.local/share/chordkv/HOST-PORT`: one directory per
/// advertised address, so several nodes on one host never share a database.
fn default_data_dir(advertise: SocketAddr) -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local").join("share"),
            None => return Err("no HOME or XDG_DATA_HOME: pass --data-dir".into()),
        },
    };
    let name = format!("{}-{}", advertise.ip(), advertise.port()).replace([':', '[', ']'], "_");
    Ok(base.join("chordkv").join(name))
}

/// A per-process seed for timer phases (the protocol itself is deterministic given the seed).
fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
