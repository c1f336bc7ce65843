//! A test cluster of real `chordkv-node` processes, driven with the real `kvctl` binary and the
//! `kvctl` client library (after toydb's `tests/testcluster.rs`).
//!
//! Each node runs as a child process on a free loopback port, with its own data directory and
//! log file inside the cluster's temporary directory, and with fast protocol timers so that a
//! ring converges in a second or two. Nothing here sleeps a fixed time hoping for convergence:
//! [`wait_until`] polls a condition until a deadline and fails with the last reason it was not
//! met. When a test panics, dropping the [`Cluster`] prints the tail of every node's log.
//!
//! The binaries are built once per test process (`cargo build --bins -p chordkv-node -p kvctl`),
//! because `cargo test --test e2e` builds only the root package's targets and would otherwise run
//! stale binaries after a change under `node/src` or `kvctl/src`.

use chordkv_node::message::{Request, Response};
use chordkv_node::wire::Dialer;
use kvctl::{Client, Id, NodeStatus, RingMember, RingView};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How long a ring may take to converge, or a process to start or stop. Generous: it only
/// matters when something is wrong, and a slow CI machine must not turn into a false failure.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// How long a node may take to answer its first status request after it was spawned.
const START: Duration = Duration::from_secs(15);

/// How often [`wait_until`] checks its condition.
const POLL: Duration = Duration::from_millis(50);

/// Timeout given to `kvctl` and to library clients, per connection and per request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Protocol timers for tests: a ring of five converges within a couple of seconds.
const FAST_TIMERS: [&str; 8] = [
    "--stabilize-ms",
    "100",
    "--fix-fingers-ms",
    "50",
    "--check-pred-ms",
    "200",
    "--rpc-timeout-ms",
    "500",
];

/// Node flags for tests of a copy that lags: one copy per write and per read, anti-entropy off
/// (so a lagging copy stays behind), fault injection on, and a client request that gives up
/// after 3 s (the default is 10), so a session read no copy can serve fails quickly; kvctl's
/// own timeout (10 s) is longer, so kvctl hears why.
pub const LAGGING_COPY_FLAGS: [&str; 9] = [
    "--allow-fault-injection",
    "--sync-ms",
    "600000",
    "--write-quorum",
    "1",
    "--read-quorum",
    "1",
    "--request-timeout-ms",
    "3000",
];

/// How many lines of each node's log to print when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Polls `check` every 50 ms until it returns `Ok`, and returns that value. Panics after
/// `timeout` with `what` and the last reason `check` gave for not being satisfied.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {reason}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// The directory holding the binaries of this build (`target/debug`): the parent of the `deps`
/// directory the test executable runs from.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable knows its own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `chordkv-node` and `kvctl` once per test process, into the target directory this test
/// executable came from.
fn build_binaries() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let profile_dir = bin_dir();
        let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
        let mut build = chordkv_node::testing::cargo::command(env!("CARGO"));
        build
            .args(["build", "--bins", "-p", "chordkv-node", "-p", "kvctl"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        // target/debug holds the dev profile; any other directory is named after its profile.
        match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => {}
            Some(profile) => {
                build.args(["--profile", profile]);
            }
        }
        let out = build
            .stdin(Stdio::null())
            .output()
            .expect("cargo can be run to build chordkv-node and kvctl");
        assert!(
            out.status.success(),
            "building chordkv-node and kvctl failed ({}); run `cargo build` to see why:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The path of binary `name` in this build, built first if needed.
pub fn binary(name: &str) -> PathBuf {
    build_binaries();
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing; run `cargo build` at the workspace root first",
        path.display()
    );
    path
}

/// A loopback address with a port that was free a moment ago. Never hands out the same port
/// twice in one test process, so clusters in parallel tests cannot collide with each other;
/// another process may still take it, which [`Cluster::start_node`] detects and retries.
pub fn free_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT
        .lock()
        .expect("no test panicked holding the port set");
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("can bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        if handed_out.insert(addr.port()) {
            return addr;
        }
    }
}

/// Sends an inline `PING` to the Redis port at `addr` and checks the answer is a reply to it.
fn resp_ping(addr: SocketAddr) -> Result<(), String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = [0u8; 64];
    let n = stream.read(&mut answer).map_err(|e| format!("read: {e}"))?;
    let answer = &answer[..n];
    if answer == b"+PONG\r\n" || answer.starts_with(b"-NOAUTH") {
        Ok(())
    } else {
        Err(format!("answered {:?}", String::from_utf8_lossy(answer)))
    }
}

/// Runs the real `kvctl` binary with `args`, feeding it `stdin`.
///
/// Without `--session FILE` or `--no-session` among `args` it runs with `--no-session`: the default session
/// file, under `$HOME`, would be shared by every test and every run, against clusters that are
/// long gone. Tests of sessions name their file.
pub fn kvctl_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(binary("kvctl"));
    if !args.contains(&"--session") && !args.contains(&"--no-session") {
        cmd.arg("--no-session");
    }
    let mut child = cmd
        .args(args)
        .env_remove("KVCTL_NODE")
        .env_remove("KVCTL_SESSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl can be spawned");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // Write from another thread: kvctl might not read all of it, or only after writing output.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("kvctl runs to the end");
    writer.join().expect("the stdin writer does not panic");
    out
}

/// Runs the real `kvctl` binary with `args` and empty standard input.
pub fn kvctl(args: &[&str]) -> Output {
    kvctl_with_input(args, b"")
}

/// One node of a [`Cluster`].
struct Node {
    /// Where it listens and what it advertises.
    addr: SocketAddr,
    /// Its sled database and stored id.
    data_dir: PathBuf,
    /// Its stderr, appended to across restarts.
    log: PathBuf,
    /// Flags given on every start, beyond the harness's own.
    extra_args: Vec<String>,
    /// Where it serves Prometheus metrics, if asked to.
    metrics: Option<SocketAddr>,
    /// Where it serves the Redis protocol (`--resp`), if asked to.
    resp: Option<SocketAddr>,
    /// The running process, if any.
    child: Option<Child>,
}

/// Real `chordkv-node` processes on loopback, each in its own directory under one temporary
/// directory, which is removed when the cluster is dropped (after the children are killed).
pub struct Cluster {
    nodes: Vec<Node>,
    /// How the harness's library clients connect (credentials, TLS); open by default.
    dialer: Dialer,
    /// Flags given to every `kvctl` run through [`Cluster::kvctl`] (a token, a CA).
    kvctl_args: Vec<String>,
    /// Whether nodes started from now on serve metrics (`--metrics`).
    with_metrics: bool,
    /// Whether nodes started from now on serve the Redis protocol (`--resp`).
    with_resp: bool,
    runtime: tokio::runtime::Runtime,
    // Dropped last: the children must be gone before their directories.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// An empty cluster; add nodes with [`Cluster::start_node`].
    pub fn new() -> Cluster {
        Cluster {
            nodes: Vec::new(),
            dialer: Client::open_dialer(),
            kvctl_args: Vec::new(),
            with_metrics: false,
            with_resp: false,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime for the client library"),
            dir: tempfile::Builder::new()
                .prefix("chordkv-e2e-")
                .tempdir()
                .expect("a temporary directory for the cluster"),
        }
    }

    /// Starts `n` nodes, the first forming the ring and the others joining through it, and
    /// waits until the ring is consistent with all of them.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with `extra_args` on every node's command line.
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::new();
        for i in 0..n {
            cluster.start_node((i > 0).then_some(0), extra_args);
        }
        cluster.wait_for_ring(&cluster.all());
        cluster
    }

    /// [`Cluster::start_with`], each node also serving Prometheus metrics on a port of its own
    /// ([`Cluster::metric`]).
    pub fn start_with_metrics(n: usize, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::new();
        cluster.with_metrics = true;
        for i in 0..n {
            cluster.start_node((i > 0).then_some(0), extra_args);
        }
        cluster.wait_for_ring(&cluster.all());
        cluster
    }

    /// [`Cluster::start_with`], each node also serving the Redis protocol on a port of its own
    /// ([`Cluster::resp_addr`]), and answering PING there before this returns.
    pub fn start_with_resp(n: usize, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::new();
        cluster.serve_resp();
        for i in 0..n {
            cluster.start_node((i > 0).then_some(0), extra_args);
        }
        cluster.wait_for_ring(&cluster.all());
        cluster
    }

    /// Nodes started from now on also serve the Redis protocol (`--resp ADDR`, a free loopback
    /// port each), and [`Cluster::start_node`] returns only once that port answers PING.
    pub fn serve_resp(&mut self) {
        self.with_resp = true;
    }

    /// The cluster's node indices in ring order, as walked in `view`, rotated to start at
    /// node 0.
    pub fn ring_order(&self, view: &RingView) -> Vec<usize> {
        let index = |addr: SocketAddr| {
            self.all()
                .into_iter()
                .find(|&i| self.addr(i) == addr)
                .unwrap_or_else(|| panic!("{addr} on the ring is none of the cluster's nodes"))
        };
        let mut order: Vec<usize> = view.nodes.iter().map(|m| index(m.node().addr)).collect();
        let zero = order
            .iter()
            .position(|&i| i == 0)
            .expect("node 0 is on the ring");
        order.rotate_left(zero);
        order
    }

    /// Starts a new node that joins through node `bootstrap` (or forms a ring of its own), with
    /// `extra_args` added to its command line on every start; returns its index once it answers
    /// a status request. A port taken by another process in the meantime is replaced.
    pub fn start_node(&mut self, bootstrap: Option<usize>, extra_args: &[&str]) -> usize {
        let bootstrap = bootstrap.map(|b| self.addr(b));
        let i = self.nodes.len();
        for attempt in 0.. {
            let addr = free_addr();
            let data_dir = self.dir.path().join(format!("node{i}-{}", addr.port()));
            let metrics = self.with_metrics.then(free_addr);
            let resp = self.with_resp.then(free_addr);
            let mut args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
            if let Some(m) = metrics {
                args.extend(["--metrics".to_string(), m.to_string()]);
            }
            if let Some(r) = resp {
                args.extend(["--resp".to_string(), r.to_string()]);
            }
            self.nodes.truncate(i);
            self.nodes.push(Node {
                addr,
                data_dir,
                log: self.dir.path().join(format!("node{i}.log")),
                extra_args: args,
                metrics,
                resp,
                child: None,
            });
            match self.spawn(i, bootstrap) {
                Ok(()) => {
                    if self.with_resp {
                        self.wait_for_resp(i);
                    }
                    return i;
                }
                Err(log)
                    if attempt < 5
                        && (log.contains("cannot listen") || log.contains("cannot serve")) =>
                {
                    continue;
                }
                Err(log) => panic!("node {i} did not start; its log:\n{log}"),
            }
        }
        unreachable!("the loop above returns or panics")
    }

    /// Runs node `i`'s process and waits until it answers as itself. `Err` holds its log if it
    /// exited instead.
    fn spawn(&mut self, i: usize, bootstrap: Option<SocketAddr>) -> Result<(), String> {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {i} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("the node's log file can be opened");
        writeln!(
            log,
            "---- harness: starting node {i} on {} (bootstrap {bootstrap:?})",
            node.addr
        )
        .expect("the node's log file can be written");
        let mut cmd = Command::new(binary("chordkv-node"));
        cmd.arg("--listen")
            .arg(node.addr.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(FAST_TIMERS)
            .args(&node.extra_args)
            // Pin the log level so that the logs printed on failure always say what happened.
            .env(
                "RUST_LOG",
                std::env::var("CHORDKV_E2E_LOG")
                    .unwrap_or_else(|_| "warn,chordkv_node=info".into()),
            )
            .env_remove("CHORDKV_LISTEN")
            .env_remove("CHORDKV_BOOTSTRAP")
            .env_remove("CHORDKV_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(b) = bootstrap {
            cmd.arg("--bootstrap").arg(b.to_string());
        }
        node.child = Some(cmd.spawn().expect("chordkv-node can be spawned"));
        let addr = node.addr;
        let deadline = Instant::now() + START;
        loop {
            let child = self.nodes[i].child.as_mut().expect("just spawned");
            if let Some(status) = child.try_wait().expect("the child can be polled") {
                self.nodes[i].child = None;
                return Err(format!("(exited with {status})\n{}", self.log_tail(i)));
            }
            // Its own address in the answer shows it is our node, not a stranger on the port.
            if let Ok(status) = self.status(i) {
                if status.node.addr == addr {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "node {i} did not answer on {addr} within {START:?}; its log:\n{}",
                    self.log_tail(i)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops node `i` with SIGTERM, as an operator would, and returns its exit status once it
    /// exited (a graceful leave hands its keys over first). Panics if it takes too long.
    pub fn stop_node(&mut self, i: usize) -> ExitStatus {
        let child = self.nodes[i].child.as_mut().expect("node is running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill(1) can be run");
        assert!(sent.success(), "kill -TERM failed for node {i}");
        let deadline = Instant::now() + CONVERGE;
        loop {
            let child = self.nodes[i].child.as_mut().expect("node is running");
            if let Some(status) = child.try_wait().expect("the child can be polled") {
                self.nodes[i].child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("node {i} did not exit within {CONVERGE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills node `i` with SIGKILL: a crash, with no chance to hand anything over.
    pub fn kill_node(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("node is running");
        child.kill().expect("the child can be killed");
        child.wait().expect("the killed child can be reaped");
    }

    /// Starts node `i` again on its data directory and port, joining through `bootstrap` (or
    /// alone), and waits until it answers. Panics if the port was taken in the meantime.
    pub fn restart_node(&mut self, i: usize, bootstrap: Option<usize>) {
        let bootstrap = bootstrap.map(|b| self.addr(b));
        if let Err(log) = self.spawn(i, bootstrap) {
            panic!("node {i} did not restart; its log:\n{log}");
        }
    }

    /// Replaces the flags node `i` gets on its next start (see [`Cluster::start_node`]).
    pub fn set_args(&mut self, i: usize, extra_args: &[&str]) {
        self.nodes[i].extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    }

    /// All node indices.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Where node `i` serves the Redis protocol. Needs a cluster that serves it
    /// ([`Cluster::start_with_resp`], [`Cluster::serve_resp`]).
    pub fn resp_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i]
            .resp
            .unwrap_or_else(|| panic!("node {i} was started without --resp"))
    }

    /// Where each node serves the Redis protocol, in node order.
    pub fn resp_addrs(&self) -> Vec<SocketAddr> {
        self.all().into_iter().map(|i| self.resp_addr(i)).collect()
    }

    /// Waits until node `i`'s Redis port answers an inline `PING` with `+PONG` (before AUTH, a
    /// node with tokens answers `-NOAUTH`, which shows it serves as well). Panics with its log
    /// if it does not within the start timeout.
    pub fn wait_for_resp(&self, i: usize) {
        let addr = self.resp_addr(i);
        let what = format!("node {i}'s Redis port {addr} to answer PING");
        let deadline = Instant::now() + START;
        loop {
            match resp_ping(addr) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "timed out waiting for {what}: {e}; its log:\n{}",
                        self.log_tail(i)
                    )
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// The value of the sample `name` (with its labels, e.g. `m{quantile="1"}`) in node `i`'s
    /// Prometheus metrics; `Ok(None)` if the node has not recorded it yet. Needs a cluster
    /// started with [`Cluster::start_with_metrics`].
    pub fn metric(&self, i: usize, name: &str) -> Result<Option<f64>, String> {
        use std::io::Read;
        let addr = self.nodes[i].metrics.expect("the cluster serves metrics");
        let mut stream = std::net::TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .map_err(|e| format!("metrics of node {i} at {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| format!("metrics of node {i}: {e}"))?;
        let value = text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok()
        });
        Ok(value)
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.nodes[i].data_dir
    }

    /// Runs the real `kvctl` against node `i`: `kvctl --node ADDR --timeout SECS ARGS...`.
    pub fn kvctl(&self, i: usize, args: &[&str]) -> Output {
        self.kvctl_with_input(i, args, b"")
    }

    /// [`Cluster::kvctl`] with `stdin` as standard input.
    pub fn kvctl_with_input(&self, i: usize, args: &[&str], stdin: &[u8]) -> Output {
        let node = self.addr(i).to_string();
        let timeout = CLIENT_TIMEOUT.as_secs().to_string();
        let mut all = vec!["--node", node.as_str(), "--timeout", timeout.as_str()];
        all.extend(self.kvctl_args.iter().map(String::as_str));
        all.extend_from_slice(args);
        kvctl_with_input(&all, stdin)
    }

    /// From now on the harness's library clients connect through `dialer`, and its `kvctl`
    /// runs get `kvctl_args`: how a test of a secured ring reaches its nodes.
    pub fn set_client_credentials(&mut self, dialer: Dialer, kvctl_args: &[&str]) {
        self.dialer = dialer;
        self.kvctl_args = kvctl_args.iter().map(|a| a.to_string()).collect();
    }

    /// The cluster's temporary directory, removed with it: where tests put credentials.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `future` on the cluster's runtime, where library clients live.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A library client connected to node `i`.
    pub fn client(&self, i: usize) -> Client {
        let addr = self.addr(i).to_string();
        self.block_on(Client::connect_with(
            &addr,
            self.dialer.clone(),
            CLIENT_TIMEOUT,
        ))
        .unwrap_or_else(|e| panic!("cannot connect to node {i} at {addr}: {e}"))
    }

    /// Node `i`'s status, asked over a fresh connection.
    pub fn status(&self, i: usize) -> Result<NodeStatus, String> {
        let addr = self.addr(i).to_string();
        self.block_on(async {
            let timeout = Duration::from_secs(2);
            Client::connect_with(&addr, self.dialer.clone(), timeout)
                .await?
                .status()
                .await
        })
        .map_err(|e| format!("status of node {i}: {e}"))
    }

    /// The ring as walked from node `i` by the client library.
    pub fn ring(&self, i: usize) -> Result<RingView, String> {
        let addr = self.addr(i).to_string();
        let timeout = Duration::from_secs(2);
        self.block_on(async {
            Client::connect_with(&addr, self.dialer.clone(), timeout)
                .await?
                .ring_view()
                .await
        })
        .map_err(|e| format!("ring walk from node {i}: {e}"))
    }

    /// `Ok` with the ring walked from the first of `members` if it is converged with exactly
    /// those nodes: consistent (closed, every node joined and answering, predecessors matching
    /// successors, ids increasing around the circle) and made of exactly their addresses.
    pub fn converged(&self, members: &[usize]) -> Result<RingView, String> {
        let start = *members.first().expect("a ring has members");
        let view = self.ring(start)?;
        if !view.is_consistent() {
            return Err(format!("inconsistent: {:?}", view.inconsistencies));
        }
        let want: BTreeSet<SocketAddr> = members.iter().map(|&i| self.addr(i)).collect();
        let got: BTreeSet<SocketAddr> = view.nodes.iter().map(|m| m.node().addr).collect();
        if got != want || view.nodes.len() != want.len() {
            return Err(format!("ring has {got:?}, want {want:?}"));
        }
        Ok(view)
    }

    /// Waits until the ring is converged with exactly `members` (see [`Cluster::converged`]).
    pub fn wait_for_ring(&self, members: &[usize]) -> RingView {
        let what = format!("a consistent ring of nodes {members:?}");
        wait_until(CONVERGE, &what, || self.converged(members))
    }

    /// Waits until every node keeps all N copies of its keys. A consistent ring is not enough
    /// for that: a node whose successor list is still short replicates to fewer nodes.
    pub fn wait_for_all_copies(&self) {
        wait_until(CONVERGE, "every node to know N - 1 successors", || {
            for i in self.all() {
                let st = self.status(i)?;
                if st.replicas < st.replicas_wanted {
                    return Err(format!(
                        "node {i} has {} of {} copies",
                        st.replicas, st.replicas_wanted
                    ));
                }
            }
            Ok(())
        });
    }

    /// The index of the cluster's node at `addr`.
    pub fn index_of(&self, addr: SocketAddr) -> usize {
        self.all()
            .into_iter()
            .find(|&i| self.addr(i) == addr)
            .unwrap_or_else(|| panic!("{addr} is none of the cluster's nodes"))
    }

    /// The owner of `key` as `kvctl --json lookup` through node `via` reports it.
    pub fn owner_of(&self, via: usize, key: &str) -> Result<usize, String> {
        let out = self.kvctl(via, &["--json", "lookup", key]);
        if !out.status.success() {
            return Err(format!("lookup {key} through node {via}: {}", stderr(&out)));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let addr: SocketAddr = v["owner"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no owner address in {v}"))?;
        Ok(self.index_of(addr))
    }

    /// The nodes after node `i` in ring order, nearest first, as node indices (the ring must
    /// be converged with all the cluster's nodes).
    pub fn successors_of(&self, i: usize) -> Vec<usize> {
        let view = self.converged(&self.all()).expect("a converged ring");
        let mut order: Vec<usize> = view
            .nodes
            .iter()
            .map(|m| self.index_of(m.node().addr))
            .collect();
        let at = order
            .iter()
            .position(|&n| n == i)
            .expect("node i is on the ring");
        order.rotate_left(at);
        order.remove(0);
        order
    }

    /// Tells node `i` to drop every request it sends to `peers` from now on (none: heal).
    /// Needs nodes started with `--allow-fault-injection`.
    pub fn block(&self, i: usize, peers: Vec<SocketAddr>) {
        let client = self.client(i);
        match self.block_on(client.call(Request::Block { peers })) {
            Ok(Response::Ack) => {}
            other => panic!("node {i} did not take the block: {other:?}"),
        }
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                eprintln!(
                    "==== node {i} ({}) log, last {LOG_TAIL_LINES} lines ====\n{}",
                    self.nodes[i].addr,
                    self.log_tail(i)
                );
            }
        }
    }
}

/// The sum of the keys the nodes of `view` own (each key counted once, on its owner; replicas
/// hold further copies).
pub fn total_keys(view: &RingView) -> u64 {
    view.nodes
        .iter()
        .filter_map(RingMember::status)
        .map(|s| s.owned)
        .sum()
}

/// The ids of the nodes of `view`, in walk order.
pub fn ids(view: &RingView) -> Vec<Id> {
    view.nodes.iter().map(|m| m.node().id).collect()
}

/// `out`'s stderr as text, for assertion messages.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `kvctl` succeeded and printed exactly `stdout`.
#[track_caller]
pub fn assert_prints(out: &Output, stdout: &[u8]) {
    assert!(
        out.status.success(),
        "kvctl failed ({}): {}",
        out.status,
        stderr(out)
    );
    assert_eq!(
        out.stdout,
        stdout,
        "kvctl printed {:?}, expected {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(stdout)
    );
}

/// Writes every pair of `data` through node `via`, over one client connection with all requests
/// in flight at once.
pub fn put_all(cluster: &Cluster, via: usize, data: &BTreeMap<String, Vec<u8>>) {
    let client = cluster.client(via);
    let failures: Vec<String> = cluster.block_on(async {
        let mut tasks = JoinSet::new();
        for (key, value) in data.clone() {
            let client = client.clone();
            tasks.spawn(async move {
                client
                    .put(key.as_bytes(), &value)
                    .await
                    .map_err(|e| format!("put {key}: {e}"))
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done.expect("a put task does not panic") {
                failures.push(e);
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {} puts through node {via} failed, e.g. {:?}",
        failures.len(),
        data.len(),
        &failures[..failures.len().min(5)]
    );
}
