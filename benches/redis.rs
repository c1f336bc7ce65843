//! What the Redis protocol port costs against Redis itself: the real `redis-benchmark -t set,get`
//! against (a) `redis-server` without persistence, (b) `redis-server --appendonly yes
//! --appendfsync always` (every write fsynced before its reply), (c) one release-built
//! `chordkv-node --replicas 1 --resp ADDR` on its default durability (group commit: a write is
//! acknowledged after a flush shared with the writes made meanwhile), and (d) three chordkv nodes
//! (N = 3, W = R = 2) through one node's port. Same run, same machine, one after the other.
//!
//! Prints a markdown table of requests/s and p50/p99 latency (from `redis-benchmark --csv`), and
//! the ratios GET chordkv / GET redis without persistence and SET chordkv / SET redis with
//! appendfsync always: the fair pairs, as a chordkv write is durable when acknowledged and a
//! Redis write without persistence is not.
//!
//! Knobs: `CHORDKV_REDIS_REQUESTS` requests per test (default 50,000: about a minute on a
//! 2-core machine), `CHORDKV_BENCH_CLIENTS` connections (default 50), values of 16 bytes.
//! `CHORDKV_REDIS_KEYS=K` spreads the commands over K random keys (`-r K`); by default
//! (0) every command uses redis-benchmark's one key, as its plain `-t get,set` run does. Each
//! RESP connection is a chordkv session, and a session's writes carry the keys it holds, so a
//! key space per connection measures sessions as they fill: before a session's write measured
//! its dependencies in one pass (and a connection's session was trimmed to 256 keys), 50
//! connections over 1,000 random keys got 256 SETs/s from one node (p50 136 ms, against
//! 12,000/s for the first 5,000 requests), and three nodes answered `-ERR session full` (a write
//! would carry 580 dependencies, the limit is 64), which stops redis-benchmark; on three nodes
//! that can still happen (writes acknowledged at W < N are not stable). `CHORDKV_REDIS_RING=0` skips
//! (d). `CHORDKV_NODE_BIN` names a node binary to run instead of the release build. Needs
//! `redis-server` and `redis-benchmark` on PATH (`apt-get install redis-server redis-tools`). Every process it starts is killed when it ends, and after each
//! run what the SETs wrote is read back, so a port that answered errors cannot pass for a fast
//! one (redis-benchmark itself stops at an error reply).
//!
//! `cargo bench --bench redis`.

mod common;

use common::env::env_or;
use common::{Ring, free_port, node_binary, start_nodes_each, wait_for_nodes};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const START: Duration = Duration::from_secs(30);

/// The longest one `redis-benchmark` run may take before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// One test of one target.
struct Row {
    target: &'static str,
    op: String,
    rps: f64,
    p50: f64,
    p99: f64,
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One RESP command's reply line (and, for a bulk string, its body) over a fresh connection.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len + 2];
        reader.read_exact(&mut body)?;
        line.push_str(&String::from_utf8_lossy(&body[..len]));
    }
    Ok(line)
}

/// Waits until the Redis port answers PING with PONG; `exited` says whether the server died.
fn wait_for_pong(what: &str, port: u16, mut exited: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + START;
    loop {
        if let Some(why) = exited() {
            panic!("{what} exited before answering on port {port}: {why}");
        }
        if let Ok(line) = command(port, &["PING"]) {
            assert_eq!(line, "+PONG\r\n", "{what} answered PING with {line:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer PING on port {port} within {START:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on `port` with `args`, its files in `dir`.
fn redis_server(port: u16, dir: &Path, args: &[&str]) -> Process {
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt-get install redis-server)");
    let mut server = Process(child);
    wait_for_pong("redis-server", port, || {
        server.0.try_wait().ok().flatten().map(|s| s.to_string())
    });
    server
}

/// Asserts `node` has a `--resp` flag: without the Redis gateway there is nothing to measure.
fn assert_gateway(node: &Path) {
    let help = Command::new(node)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{} cannot be run: {e}", node.display()));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--resp"),
        "{} has no --resp flag: this build of chordkv-node has no Redis protocol port, so \
         targets (c) and (d) cannot run (merge the branch that adds it, or set CHORDKV_NODE_BIN)",
        node.display()
    );
}

/// chordkv nodes of `node`, `n` of them, each with a Redis port; returns them and the ports
/// once the ring has formed and every port answers PING.
fn chordkv(node: &Path, n: usize, rt: &tokio::runtime::Runtime) -> (Ring, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let flags: &[&str] = if n == 1 { &["--replicas", "1"] } else { &[] };
    let resp = ports.clone();
    let mut ring = start_nodes_each(node, n, flags, |i| {
        vec!["--resp".into(), format!("127.0.0.1:{}", resp[i])]
    });
    for &port in &ports {
        wait_for_pong("chordkv-node", port, || ring.exited());
    }
    let replicas = if n == 1 { 1 } else { 3 };
    rt.block_on(wait_for_nodes(&ring.addrs[0], n, replicas));
    (ring, ports)
}

/// Runs `redis-benchmark -t set,get --csv` against `port` and returns its rows.
fn benchmark(target: &'static str, port: u16, requests: u64, clients: u64, keys: u64) -> Vec<Row> {
    let mut child = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get"])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-d", "16", "--csv"])
        .args(if keys > 0 {
            vec!["-r".to_string(), keys.to_string()]
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-benchmark runs (apt-get install redis-tools)");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        }),
    );
    let mut child = Process(child);
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("redis-benchmark can be polled") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "redis-benchmark against {target} ran over {RUN_LIMIT:?}; killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(child);
    let out = readers.0.join().expect("the stdout reader");
    let err = readers.1.join().expect("the stderr reader");
    assert!(
        status.success(),
        "redis-benchmark against {target}: {status}\n{out}{err}"
    );

    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let rows: Vec<Row> = out
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
            let num = |i: usize| -> f64 {
                f.get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("redis-benchmark printed {line:?}"))
            };
            Row {
                target,
                op: f[0].to_string(),
                rps: num(1),
                p50: num(4),
                p99: num(6),
            }
        })
        .collect();
    let ops: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops, ["SET", "GET"], "redis-benchmark printed:\n{out}{err}");
    rows
}

/// Checks that SETs were stored, each with redis-benchmark's 16-byte value: its one key, or of
/// 100 keys of its key space most (with `requests` random SETs over `keys` keys, a fraction
/// 1 - e^(-requests/keys) exists).
fn assert_stored(target: &str, port: u16, requests: u64, keys: u64) {
    let strlen = |key: &str| -> bool {
        match command(port, &["STRLEN", key])
            .expect("STRLEN answers")
            .as_str()
        {
            ":16\r\n" => true,
            ":0\r\n" => false,
            other => panic!("STRLEN {key} on {target}: {other:?}, want 16 (or 0)"),
        }
    };
    if keys == 0 {
        assert!(
            strlen("key:__rand_int__"),
            "{target}: redis-benchmark's key was not stored"
        );
        return;
    }
    let expected = 1.0 - (-(requests as f64) / keys as f64).exp();
    let sample = 100u64;
    let found = (0..sample)
        .filter(|k| strlen(&format!("key:{:012}", k * keys / sample)))
        .count() as u64;
    let want = (expected * sample as f64 * 0.8) as u64;
    assert!(
        found >= want,
        "{target}: only {found} of {sample} sampled keys were stored, want at least {want}"
    );
}

fn ratio(num: Option<&Row>, den: Option<&Row>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d.rps > 0.0 => format!("{:.2}", n.rps / d.rps),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row], requests: u64, clients: u64, keys: u64) {
    let spread = if keys > 0 {
        format!(" -r {keys}")
    } else {
        String::new()
    };
    println!(
        "\nredis-benchmark -t set,get -c {clients} -n {requests}{spread} -d 16 (latencies in ms)\n"
    );
    println!("| target | op | requests/s | p50 | p99 |");
    println!("|---|---|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} |",
            r.target, r.op, r.rps, r.p50, r.p99
        );
    }
    let find = |target: &str, op: &str| rows.iter().find(|r| r.target == target && r.op == op);
    println!();
    // GETs against Redis at its fastest; SETs against Redis durable on every write, as a
    // chordkv write is when acknowledged.
    for (chordkv, nodes) in [(TARGETS[2], "1 node"), (TARGETS[3], "3 nodes")] {
        if find(chordkv, "SET").is_none() {
            continue;
        }
        for (op, redis, how) in [
            ("GET", TARGETS[0], "no persistence"),
            ("SET", TARGETS[1], "appendfsync always"),
        ] {
            println!(
                "{op} chordkv ({nodes}) / {op} redis ({how}): {}",
                ratio(find(chordkv, op), find(redis, op))
            );
        }
    }
}

const TARGETS: [&str; 4] = [
    "(a) redis-server, no persistence",
    "(b) redis-server, appendfsync always",
    "(c) chordkv, 1 node, group commit",
    "(d) chordkv, 3 nodes, via one node",
];

fn main() {
    let requests = env_or("CHORDKV_REDIS_REQUESTS", 50_000).max(1);
    let clients = env_or("CHORDKV_BENCH_CLIENTS", 50).max(1);
    let keys = env_or("CHORDKV_REDIS_KEYS", 0);
    let with_ring = env_or("CHORDKV_REDIS_RING", 1) != 0;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut rows = Vec::new();

    let run = |rows: &mut Vec<Row>, target: &'static str, port: u16| {
        eprintln!("{target}: redis-benchmark on port {port}");
        rows.extend(benchmark(target, port, requests, clients, keys));
        assert_stored(target, port, requests, keys);
    };

    for (target, args) in [
        (TARGETS[0], &["--appendonly", "no"][..]),
        (
            TARGETS[1],
            &["--appendonly", "yes", "--appendfsync", "always"],
        ),
    ] {
        let port = free_port();
        let own = dir.path().join(port.to_string());
        std::fs::create_dir(&own).expect("a directory for redis-server");
        let server = redis_server(port, &own, args);
        run(&mut rows, target, port);
        drop(server);
    }

    // chordkv after Redis: what was measured is printed even if the node cannot serve.
    let node = node_binary();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_gateway(&node);
        let sizes: &[usize] = if with_ring { &[1, 3] } else { &[1] };
        for &n in sizes {
            let (ring, ports) = chordkv(&node, n, &rt);
            let target = if n == 1 { TARGETS[2] } else { TARGETS[3] };
            run(&mut rows, target, ports[0]);
            drop(ring);
        }
    }));
    print_table(&rows, requests, clients, keys);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}
