//! The server: all of a node's I/O in one place.
//!
//! SHAPE
//!
//! One task, the *core loop*, owns the [`Node`] state machine and its sled storage and is the only
//! code that touches them. Everything else feeds it inputs over one bounded channel:
//! - an accept loop hands each connection to a task that checks the handshake and reads frames;
//!   requests go to the core, answers come back through the connection's writer task;
//! - a ticker drives [`Node::tick`];
//! - every [`Output::Send`] runs in its own small task over a pooled [`Channel`] to that peer
//!   and returns its answer (or the transport's error) to the core as an input;
//! - a flusher thread flushes the storage when the core asks and reports back on a channel of
//!   its own (GROUP COMMIT);
//! - the shutdown future starts a graceful leave.
//!
//! GROUP COMMIT
//!
//! Acknowledgements never precede durability, and the core loop never waits for the disk. A
//! flusher thread of the node's own ([`Flusher`]; sled 0.34's `flush_async` deadlocks with many
//! waiters, sled #1308) flushes through the storage's [`Storage::flush_handle`] whenever the core
//! asks, and the core goes on handling inputs meanwhile. The core numbers every write to its
//! storage (`Tracked`). After each input, tick or leave it applies one rule to the outputs the
//! state machine made:
//! - an answer ([`Output::Respond`]) made after write `k` is held until a flush that began after
//!   write `k` has completed; one made when every write so far is durable (a read in a
//!   write-free moment) goes at once;
//! - a request to a peer ([`Output::Send`]) goes at once, so replication runs on the replicas
//!   while we flush here; only a tombstone collection's commit waits like an answer (see
//!   `Request::waits_for_flush` for why that one, and why none of the others);
//! - events are logged at once.
//!
//! An answer waits for every write made before it, not only for the one it acknowledges: the
//! owner's answer to a W=2 write, made when its replica answers, also waits for the writes that
//! arrived meanwhile, so under load for the flush after the one in flight. Only the state machine
//! could say what each answer depends on; the server does not guess.
//!
//! At the end of a turn (a batch of ready inputs, a tick, or a flush's report), if no flush is in
//! flight and something is unflushed, the core starts one covering every write so far; writes
//! made while it runs wait for the next, so concurrent writers share flushes (group commit) with
//! at most one flush in flight. The flusher reports which write number a flush covered on a
//! channel of its own, polled first; the held outputs it covers leave in the order they were
//! made. (A flusher that flushes again by itself whenever the count has moved, without waiting
//! for the turn to end, was tried and dropped: with it the replication system tests with large
//! values timed out in 3 runs of 4. The ring-growth one of them also times out now and then on a
//! loaded machine without any of this change, so the cause was not pinned down; its gain was
//! within the bench's noise.)
//!
//! Every answer waits, whatever it answers: ring maintenance too (pings, neighbours, routes,
//! status). Telling them apart buys little, since an answer waits for the rest of the flush in
//! flight and one more at most (a fraction of a millisecond to a few, against failure-detector
//! timeouts of hundreds), and would cost what fail-stop is for: a node whose disk hangs would keep
//! answering heartbeats while holding every write, and the ring would never route around it.
//! Holding them all, such a node falls silent and is handled as a crash. It also keeps the rule
//! free of per-key bookkeeping: a read of another key may show what the unflushed write changed (a
//! key count, a session's dependencies).
//!
//! Order: held outputs leave in the order they were made, and an output goes at once only when
//! every write so far is durable, when nothing is held (a held output waits for writes made
//! before it, durable by then, and reports are taken in before any new output): no answer
//! overtakes an earlier one, on its connection or any other. Requests to peers do overtake held
//! answers; each already goes out in a task of its own, in no promised order.
//!
//! [`Durability`] selects this, a flush per write (for comparison: one input per turn, and the
//! core waits for that input's flush before the next; its requests to peers still go first), or
//! acknowledging before the flush (faster, with a window of loss on a crash of the process).
//! Stopping, the core waits for a last flush of everything and then releases what it held.
//!
//! FLUSH FAILURES
//!
//! A failed flush stops the node (fail-stop): every held answer becomes an error, no held message
//! is sent, an error is logged, every connection closes and [`run`] returns [`Error::Io`] (the
//! binary exits with code 2). Turning only the answers the failed flush covered into errors is
//! not enough: a write's acknowledgement may be made later (the owner of a W=2 write answers
//! when its replica does), and nothing would tell that answer apart. Staying up and refusing
//! every acknowledgement until a flush succeeds would be correct too, but sled makes a failed
//! log write sticky: it fails every later flush until the database is reopened. Such a node would
//! keep answering heartbeats and owning its range while refusing every write to it, and the ring
//! would never route around it. Stopping turns a failing disk into the crash the rest of the
//! design handles: the failure detector notices, the successors take over the range with their
//! copies, and a restart on the data directory recovers what was flushed. Writes the failed flush
//! covered were never acknowledged by this node: for their clients they are "maybe". Their
//! replication requests left before the flush, so replicas may hold them, as after a crash.
//!
//! BOUNDS
//!
//! Nothing a connection sends costs memory or time before it is checked:
//! - **Handshake first.** A connection gets [`HANDSHAKE_TIMEOUT`] to finish TLS (if the node
//!   speaks it) and the authenticating handshake ([`wire::handshake`]); at most
//!   [`MAX_HANDSHAKES`] may be in it at once, and a connection beyond that is closed unread.
//!   Only then does it take a place in its role's budget.
//! - **Separate budgets.** Peers ([`Config::max_peer_connections`]) and clients
//!   ([`Config::max_connections`]) never compete for places, so a flood of clients cannot lock
//!   a peer out. When a budget is full, a new connection takes the place of the one idle
//!   longest if that one has said nothing for [`EVICT_IDLE`] (it is closed with an
//!   [`Error::Overloaded`] notice); otherwise the new one gets that notice and is closed.
//! - **Idle connections close** after [`Config::idle_timeout`] with neither a request read nor
//!   an answer written.
//! - **Access.** Every request is checked against the access the handshake granted
//!   ([`crate::auth::Access::permits`]); one beyond it is answered [`Error::Forbidden`],
//!   counted in `chordkv_requests_forbidden_total`, and the connection serves on.
//! - **Sizes.** Frames, keys and values are bounded by [`Limits`] (an oversized request gets
//!   an error answer; a frame that cannot be parsed gets an error notice and its connection
//!   closes). A response too large for a frame is replaced by an [`Error::TooLarge`] answer on
//!   the live connection (counted in `chordkv_oversized_responses_total`, logged as a warning):
//!   closing the connection instead would fail every call multiplexed on it, and a peer would
//!   take it for a crash. A request of ours too large for a frame is never sent; the state
//!   machine gets the error as its answer, which is no sign of the peer being down.
//! - **The input queue** is bounded in count and in bytes: a request read takes its frame's
//!   size from a budget of [`input_budget`] bytes and gives it back once the core has handled
//!   it, so readers wait (and stop reading their sockets) instead of memory growing. A backlog
//!   of outputs held for a flush (`MAX_HELD`) pauses the intake too, until the flusher catches
//!   up.
//! - **Outbound.** Each request to a peer fails within its own RPC timeout, whatever it waits
//!   for (another sender's connect, its own, a slot, the answer), so the requests queued for a
//!   peer that swallows packets fail by their own deadlines and drop their payloads. The pool
//!   of peer connections drops, every [`PRUNE_EVERY`], the slots of peers no longer talked to.

use crate::auth::{Access, Gate};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::kv;
use crate::message::{Envelope, NodeRef, Request, RequestId, Response};
use crate::node::{Event, Node, Options, Output};
use crate::ring;
use crate::rpc::ConnId;
use crate::storage::{FlushHandle, SledStorage, Storage};
use crate::tls::{ClientTls, ServerTls};
use crate::wire::{self, Channel, Credential, Dialer, FrameReader, FrameWriter, Limits, Role};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, error, info, warn};

/// How a node is run: addresses, data directory and bounds. Protocol tunables are in `node`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address peers and clients reach this node at; its id is the SHA-1 of this.
    pub advertise: SocketAddr,
    /// A member of the ring to join through; `None` starts a new ring.
    pub bootstrap: Option<SocketAddr>,
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// The most memory sled's page cache may take.
    pub cache_bytes: u64,
    /// Use this id instead of the SHA-1 of the advertised address (only on first start).
    pub node_id: Option<Id>,
    /// Protocol tunables.
    pub node: Options,
    /// Frame, key and value bounds.
    pub limits: Limits,
    /// Most open client connections at once (see BOUNDS for what happens beyond it).
    pub max_connections: usize,
    /// Most open connections from peers at once, apart from the clients' budget.
    pub max_peer_connections: usize,
    /// A connection that neither sends nor is answered anything for this long is closed.
    pub idle_timeout: Duration,
    /// Who may connect, and whether to speak TLS.
    pub security: Security,
    /// How often the state machine's timers are checked.
    pub tick: Duration,
    /// How long a graceful leave may take before the node exits anyway.
    pub leave_timeout: Duration,
    /// When an acknowledgement may leave relative to the flush of its write.
    pub durability: Durability,
    /// Whether [`Request::Block`] (a simulated partition, for tests) is honoured.
    pub allow_fault_injection: bool,
    /// The Redis protocol port, if the node opens one ([`crate::resp`]).
    pub resp: Option<crate::resp::Config>,
}

/// What a node asks of whoever connects, and how it talks to its peers: see [`crate::auth`] and
/// [`crate::tls`]. The default is open, plain TCP: for loopback only.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// The cluster secret peers must prove, and the tokens clients must.
    pub gate: Gate,
    /// Speak TLS on the listening port, with this certificate.
    pub tls_server: Option<ServerTls>,
    /// Speak TLS to peers, trusting these CAs.
    pub tls_client: Option<ClientTls>,
}

impl Security {
    /// How this node dials its peers: as a node, proving the cluster secret if it has one.
    pub fn dialer(&self, limits: Limits) -> Dialer {
        Dialer {
            role: Role::Node,
            credential: self
                .gate
                .cluster
                .clone()
                .map_or(Credential::None, Credential::Cluster),
            tls: self.tls_client.clone(),
            limits,
        }
    }
}

/// How writes are made durable before they are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every acknowledgement waits for a flush that covers its write; the flusher thread flushes
    /// while the core serves on, and writes made during one flush share the next (group commit).
    /// Survives a kill of the process at any moment.
    #[default]
    Group,
    /// Like `Group`, but one input at a time, and the core waits for each input's flush before it
    /// takes the next: a flush per write. Slower; kept to measure what group commit buys.
    PerWrite,
    /// Acknowledge before flushing. sled's background thread flushes within about 500 ms, so a
    /// kill of the process can lose the writes of that last half second on this node, including
    /// acknowledged ones (other replicas may still hold them).
    Relaxed,
}

impl Config {
    /// A configuration with default bounds and tunables.
    pub fn new(advertise: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            advertise,
            bootstrap: None,
            data_dir,
            cache_bytes: crate::storage::DEFAULT_CACHE_BYTES,
            node_id: None,
            node: Options::default(),
            limits: Limits::default(),
            max_connections: 1024,
            max_peer_connections: 256,
            idle_timeout: Duration::from_secs(300),
            security: Security::default(),
            tick: Duration::from_millis(20),
            leave_timeout: Duration::from_secs(30),
            durability: Durability::Group,
            allow_fault_injection: false,
            resp: None,
        }
    }
}

/// The meta key the node id is kept under, so a restart keeps its place on the ring.
const NODE_ID_META: &str = "node_id";

/// Open the node's storage and settle its id: the stored one, else the configured one, else the
/// SHA-1 of the advertised address; a new id is stored before the node first speaks.
///
/// # Errors
/// [`Error::Io`] if the database cannot be opened (for instance another node holds it);
/// [`Error::InvalidInput`] if `--node-id` disagrees with the id already stored there.
pub fn open_storage(config: &Config) -> Result<(SledStorage, Id)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Io(format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let mut storage = SledStorage::open_with_cache(&config.data_dir, config.cache_bytes)?;
    let id = match storage.get_meta(NODE_ID_META)? {
        Some(bytes) => {
            let raw: [u8; 20] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::InvalidData("stored node id is not 20 bytes".into()))?;
            let stored = Id(raw);
            if config.node_id.is_some_and(|want| want != stored) {
                return Err(Error::InvalidInput(format!(
                    "{} already belongs to node {stored}; use another --data-dir",
                    config.data_dir.display()
                )));
            }
            stored
        }
        None => {
            let id = config
                .node_id
                .unwrap_or_else(|| Id::hash(config.advertise.to_string().as_bytes()));
            storage.set_meta(NODE_ID_META, &id.0)?;
            id
        }
    };
    Ok((storage, id))
}

/// What the core loop reacts to.
enum Input {
    /// A connection opened; answers for it go to `tx`.
    Open {
        conn: ConnId,
        tx: mpsc::Sender<Envelope>,
    },
    /// A connection closed.
    Close { conn: ConnId },
    /// A request arrived.
    Request {
        conn: ConnId,
        id: RequestId,
        request: Request,
        /// Its frame's share of the input budget (BOUNDS), returned once it is handled.
        cost: OwnedSemaphorePermit,
    },
    /// A peer answered one of our requests, or the transport failed.
    Response {
        id: RequestId,
        response: Result<Response>,
    },
}

/// A storage wrapper that numbers the writes made through it (puts, deletes, meta writes), so
/// the core knows which flush covers which write.
struct Tracked<S> {
    inner: S,
    /// How many writes were made so far: write number `written` is the latest.
    written: u64,
}

impl<S: Storage> Storage for Tracked<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.written += 1;
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.written += 1;
        self.inner.delete(key)
    }
    fn visit_range(
        &self,
        from: Id,
        to: Id,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.inner.visit_range(from, to, visit)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn flush_handle(&self) -> FlushHandle {
        self.inner.flush_handle()
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }
    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        // Durable by itself, but counting it costs at most one flush and assumes nothing about
        // what an engine's meta flush covers.
        self.written += 1;
        self.inner.set_meta(name, value)
    }
}

/// What the flusher thread tells the core: the write number a flush covered, and how it went.
type FlushReport = (u64, Result<()>);

/// The node's flusher thread, and what the core knows of it (see GROUP COMMIT). At most one
/// flush is in flight; its report comes back on a channel of its own, never behind the inputs
/// it releases, and still while the core has stopped taking inputs.
struct Flusher {
    /// Write numbers to flush up to; the thread begins each flush after receiving its number.
    requests: Option<std::sync::mpsc::Sender<u64>>,
    reports: mpsc::UnboundedReceiver<FlushReport>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The write number the flush in flight covers.
    in_flight: Option<u64>,
    /// Every write up to this number is durable.
    flushed: u64,
}

impl Flusher {
    /// Start the thread, flushing through `flush`.
    fn spawn(flush: FlushHandle) -> Result<Flusher> {
        let (requests, work) = std::sync::mpsc::channel::<u64>();
        let (report, reports) = mpsc::unbounded_channel::<FlushReport>();
        let thread = std::thread::Builder::new()
            .name("chordkv-flusher".into())
            .spawn(move || {
                while let Ok(upto) = work.recv() {
                    let began = Instant::now();
                    let result = flush();
                    metrics::histogram!("chordkv_flush_seconds")
                        .record(began.elapsed().as_secs_f64());
                    if report.send((upto, result)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Io(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher {
            requests: Some(requests),
            reports,
            thread: Some(thread),
            in_flight: None,
            flushed: 0,
        })
    }

    /// Begin a flush of every write up to number `written`, unless one is in flight or those
    /// writes are durable already. Write `written` was made before this call, so before the
    /// flush begins.
    fn start(&mut self, written: u64) {
        if self.in_flight.is_some() || written <= self.flushed {
            return;
        }
        // A thread that is gone drops its report sender: the core hears that as a failure.
        if let Some(requests) = &self.requests {
            let _ = requests.send(written);
        }
        self.in_flight = Some(written);
    }

    /// Take in the report of the flush in flight.
    ///
    /// # Errors
    /// [`Error::Io`] if the flush failed or the thread is gone.
    fn complete(&mut self, report: Option<FlushReport>) -> Result<()> {
        self.in_flight = None;
        metrics::counter!("chordkv_flushes_total").increment(1);
        match report {
            Some((upto, Ok(()))) => {
                self.flushed = self.flushed.max(upto);
                Ok(())
            }
            Some((_, Err(e))) => Err(e),
            None => Err(Error::Io("the flusher thread stopped".into())),
        }
    }

    /// Wait for the flush in flight, if any, and take in its report.
    ///
    /// # Errors
    /// As [`Flusher::complete`].
    async fn wait(&mut self) -> Result<()> {
        if self.in_flight.is_none() {
            return Ok(());
        }
        let report = self.reports.recv().await;
        self.complete(report)
    }
}

impl Drop for Flusher {
    /// Closing the request channel ends the thread; an idle one is joined, so that its handle on
    /// the storage (sled's directory lock) is gone when the server returns. One stuck in a flush
    /// is left to finish by itself.
    fn drop(&mut self) {
        self.requests = None;
        if self.in_flight.is_none()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// Most inputs handled in one turn of the core loop.
const BATCH: usize = 512;

/// Most outputs held for a flush before the core stops taking inputs (a stuck disk slows the
/// readers down instead of growing memory); one turn may add a batch's worth beyond it.
const MAX_HELD: usize = 16 * BATCH;

/// Run a node on `listener` until `shutdown` completes, then leave the ring gracefully (handing
/// keys to the successor) and return.
///
/// # Errors
/// [`Error::Io`] if the storage cannot be opened or the listener fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.limits.validate()?;
    let (storage, id) = open_storage(&config)?;
    serve(config, listener, storage, id, shutdown).await
}

/// [`run`] over a storage the caller opened, as node `id` (see [`open_storage`]): how tests run
/// a server on an engine of their choosing. `config.data_dir` is only logged.
///
/// # Errors
/// [`Error::Io`] if the storage or the listener fails.
pub async fn serve<S: Storage>(
    config: Config,
    listener: TcpListener,
    storage: S,
    id: Id,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config.limits.validate()?;
    let me = NodeRef {
        id,
        addr: config.advertise,
    };
    info!(node = %id.short(), addr = %me.addr, data_dir = %config.data_dir.display(), "starting");
    let start = Instant::now();
    let now = move || start.elapsed().as_millis() as u64;
    let mut flusher = Flusher::spawn(storage.flush_handle())?;
    let storage = Tracked {
        inner: storage,
        written: 0,
    };
    let mut node = Node::new(me, config.node.clone(), storage, now());
    node.start(config.bootstrap, now());
    if !node.kv().is_indexed() {
        info!("serving keys kept in the data directory; rebuilding their hash tree meanwhile");
    }

    let (tx, mut rx) = mpsc::channel::<Input>(4096);
    let peers = Peers::new(config.clone(), tx.clone());
    let core = local::Core {
        inputs: tx.clone(),
        input_bytes: Arc::new(Semaphore::new(input_budget(config.limits.max_frame))),
        conn_ids: Arc::new(AtomicU64::new(1)),
        limits: config.limits,
        timeout: Duration::from_millis(config.node.kv.request_timeout) + Duration::from_secs(5),
    };
    let resp = match &config.resp {
        Some(resp) => {
            let listener = TcpListener::bind(resp.listen).await.map_err(|e| {
                Error::Io(format!("cannot listen for RESP on {}: {e}", resp.listen))
            })?;
            let gateway = crate::resp::Gateway::new(resp.clone(), &config, core.clone());
            Some(tokio::spawn(crate::resp::accept_loop(listener, gateway)))
        }
        None => None,
    };
    let accept = tokio::spawn(accept_loop(
        listener,
        core.clone(),
        config.clone(),
        peers.clone(),
    ));
    let mut conns: HashMap<ConnId, mpsc::Sender<Envelope>> = HashMap::new();
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut leave_deadline: Option<Instant> = None;
    let mut exported = Instant::now();
    let batch = match config.durability {
        Durability::PerWrite => 1,
        _ => BATCH,
    };
    let out = Deliver {
        me: &me,
        peers: &peers,
        relaxed: config.durability == Durability::Relaxed,
    };
    // Outputs waiting for a flush, each with the number of the last write made before it, in
    // the order they were made (so the numbers never decrease).
    let mut held: VecDeque<(u64, Output)> = VecDeque::new();
    // Outputs of this turn that need not wait, delivered at its end.
    let mut ready: Vec<Output> = Vec::new();

    let failed = 'core: loop {
        tokio::select! {
            biased;
            report = flusher.reports.recv(), if flusher.in_flight.is_some() => {
                if let Err(e) = flusher.complete(report) {
                    break 'core Some(e);
                }
                out.release(&conns, &mut held, flusher.flushed);
            }
            _ = ticker.tick() => {
                node.tick(now());
                if exported.elapsed() >= Duration::from_secs(1) {
                    exported = Instant::now();
                    // Requests the ring or data layer found implausible (a forged or stale
                    // hand-over, notice or collection), by kind.
                    for (kind, n) in node.refusals().counts() {
                        metrics::counter!("chordkv_requests_implausible_total", "kind" => kind)
                            .absolute(n);
                    }
                }
                if leave_deadline.is_some_and(|d| Instant::now() > d) {
                    warn!("graceful leave did not finish in time; exiting anyway");
                    break 'core None;
                }
            }
            () = &mut shutdown, if leave_deadline.is_none() => {
                info!("leaving the ring: handing keys to the successor");
                leave_deadline = Some(Instant::now() + config.leave_timeout);
                node.leave(now());
            }
            input = rx.recv(), if held.len() < MAX_HELD => {
                let Some(input) = input else { break 'core None };
                let mut next = Some(input);
                let mut handled = 0;
                while let Some(input) = next.take() {
                    handle_input(&mut node, &mut conns, input, now());
                    // Each input's outputs are routed before the next input can write.
                    if out.route(&mut node, &mut ready, &mut held, flusher.flushed) {
                        break 'core None;
                    }
                    handled += 1;
                    if handled < batch {
                        next = rx.try_recv().ok();
                    }
                }
            }
        }
        let left = out.route(&mut node, &mut ready, &mut held, flusher.flushed);
        for output in ready.drain(..) {
            out.deliver(&conns, output);
        }
        if left {
            break 'core None;
        }
        if !out.relaxed {
            flusher.start(node.storage().written);
        }
        if config.durability == Durability::PerWrite {
            // A flush per write: nothing else is served until this one is done.
            if let Err(e) = flusher.wait().await {
                break 'core Some(e);
            }
            out.release(&conns, &mut held, flusher.flushed);
        }
        metrics::gauge!("chordkv_keys").set(node.kv().keys_stored() as f64);
    };
    accept.abort();
    if let Some(resp) = resp {
        resp.abort();
    }
    // What a turn cut short by the node's leave made ready.
    for output in ready.drain(..) {
        out.deliver(&conns, output);
    }
    // Stopping: one last flush covers every write (in every mode), then what it held may go.
    let failed = match failed {
        Some(e) => Some(e),
        None => {
            let mut result = flusher.wait().await;
            if result.is_ok() {
                flusher.start(node.storage().written);
                result = flusher.wait().await;
            }
            result.err()
        }
    };
    if let Some(e) = failed {
        // Fail-stop: see FLUSH FAILURES in the module doc.
        metrics::counter!("chordkv_flush_failures_total").increment(1);
        error!(
            node = %id.short(),
            error = %e,
            "flush failed: stopping now, so that no write it covered is acknowledged; \
             restart the node on its data directory to recover what was flushed"
        );
        refuse_held(&conns, held.into_iter().map(|(_, output)| output), &e);
        return Err(Error::Io(format!(
            "flush failed, node stopped without acknowledging the writes it covered: {e}"
        )));
    }
    for (_, output) in held {
        out.deliver(&conns, output);
    }
    info!("stopped");
    Ok(())
}

/// Where the core's outputs go: requests to peers, answers to connections, events to the log.
struct Deliver<'a> {
    me: &'a NodeRef,
    peers: &'a Peers,
    /// Whether answers go before the flush ([`Durability::Relaxed`]).
    relaxed: bool,
}

impl Deliver<'_> {
    /// Sort the state machine's new outputs by the acknowledgement rule (GROUP COMMIT), given
    /// that writes up to `flushed` are durable: into `ready`, to deliver at the end of the turn
    /// (so that a connection's writer sends a turn's answers together), or into `held`. Events
    /// are logged at once. Returns true when the node has left (its outputs after that are
    /// dropped).
    fn route<S: Storage>(
        &self,
        node: &mut Node<Tracked<S>>,
        ready: &mut Vec<Output>,
        held: &mut VecDeque<(u64, Output)>,
        flushed: u64,
    ) -> bool {
        // Every output made since the last call was made after the writes counted now (perhaps
        // before some of them: holding it longer is safe).
        let written = node.storage().written;
        while let Some(output) = node.poll_output() {
            match output {
                Output::Event(event) => {
                    if record_event(self.me, &event) {
                        return true;
                    }
                }
                Output::Send { ref request, .. } if !request.waits_for_flush() => {
                    ready.push(output)
                }
                // Held outputs all wait for writes after `flushed`, so none is held now and this
                // one overtakes nothing (`ready` is delivered before any held output is released).
                output if self.relaxed || written <= flushed => {
                    debug_assert!(held.is_empty(), "an output would overtake a held one");
                    ready.push(output);
                }
                output => held.push_back((written, output)),
            }
        }
        false
    }

    /// Deliver the held outputs that waited for writes up to `flushed`, in order.
    fn release(
        &self,
        conns: &HashMap<ConnId, mpsc::Sender<Envelope>>,
        held: &mut VecDeque<(u64, Output)>,
        flushed: u64,
    ) {
        while held.front().is_some_and(|(w, _)| *w <= flushed) {
            if let Some((_, output)) = held.pop_front() {
                self.deliver(conns, output);
            }
        }
    }

    fn deliver(&self, conns: &HashMap<ConnId, mpsc::Sender<Envelope>>, output: Output) {
        match output {
            Output::Send { to, id, request } => {
                metrics::counter!("chordkv_messages_out_total", "kind" => request.kind())
                    .increment(1);
                self.peers.send(to, id, request);
            }
            Output::Respond { conn, id, response } => {
                if let Some(tx) = conns.get(&conn) {
                    // A full or closed writer means the client is gone or not reading.
                    let _ = tx.try_send(Envelope::Response { id, body: response });
                }
            }
            Output::Event(event) => {
                record_event(self.me, &event);
            }
        }
    }
}

/// The outputs held for a flush that failed, as the node stops: every answer becomes an error
/// (none may acknowledge a write the flush covered, nor show a value it may lose), and no held
/// message is sent.
fn refuse_held(
    conns: &HashMap<ConnId, mpsc::Sender<Envelope>>,
    outputs: impl Iterator<Item = Output>,
    error: &Error,
) {
    for out in outputs {
        if let Output::Respond { conn, id, response } = out {
            let body = match response {
                Ok(_) => Err(Error::Io(format!(
                    "not made durable, the node is stopping: {error}"
                ))),
                Err(e) => Err(e),
            };
            if let Some(tx) = conns.get(&conn) {
                let _ = tx.try_send(Envelope::Response { id, body });
            }
        }
    }
}

/// Feed one input to the state machine.
fn handle_input<S: Storage>(
    node: &mut Node<S>,
    conns: &mut HashMap<ConnId, mpsc::Sender<Envelope>>,
    input: Input,
    now: u64,
) {
    match input {
        Input::Open { conn, tx } => {
            conns.insert(conn, tx);
        }
        Input::Close { conn } => {
            conns.remove(&conn);
        }
        Input::Request {
            conn,
            id,
            request,
            cost,
        } => {
            metrics::counter!("chordkv_requests_total", "kind" => request.kind()).increment(1);
            node.handle_request(conn, id, request, now);
            drop(cost);
        }
        Input::Response { id, response } => node.handle_response(id, response, now),
    }
}

/// Log and count an event; returns true when the node has left and should stop.
fn record_event(me: &NodeRef, event: &Event) -> bool {
    match event {
        Event::Ring(e) => record_ring_event(me, e),
        Event::Kv(e) => {
            record_kv_event(me, e);
            false
        }
    }
}

/// Log and count one of the ring's events; returns true when the node has left.
fn record_ring_event(me: &NodeRef, event: &ring::Event) -> bool {
    use ring::Event;
    let node = me.id.short();
    match event {
        Event::Joined { succ } => info!(node, succ = %succ, "joined the ring"),
        Event::Installed => info!(node, "took over its range of keys from its successor"),
        Event::PredecessorChanged { pred } => {
            info!(node, pred = ?pred, "predecessor changed")
        }
        Event::SuccessorChanged { succ } => info!(node, succ = %succ, "successor changed"),
        Event::Stabilized => metrics::counter!("chordkv_stabilize_rounds_total").increment(1),
        Event::LookupDone { hops, timeouts } => {
            metrics::counter!("chordkv_lookups_total").increment(1);
            metrics::histogram!("chordkv_lookup_hops").record(f64::from(*hops));
            metrics::counter!("chordkv_lookup_timeouts_total").increment(u64::from(*timeouts));
        }
        Event::LookupFailed { error } => {
            metrics::counter!("chordkv_lookup_failures_total").increment(1);
            debug!(node, %error, "lookup failed");
        }
        Event::Suspected { node: peer } => {
            metrics::counter!("chordkv_suspicions_total").increment(1);
            warn!(node, peer = %peer, "peer stopped answering; dropped from routing state");
        }
        Event::Detected {
            node: peer,
            detection_ms,
        } => {
            metrics::histogram!("chordkv_detection_ms").record(*detection_ms as f64);
            warn!(node, peer = %peer, detection_ms, "neighbour suspected by the failure detector");
        }
        Event::FalseSuspicion { node: peer } => {
            metrics::counter!("chordkv_false_suspicions_total").increment(1);
            info!(node, peer = %peer, "suspicion withdrawn: the neighbour answered");
        }
        Event::Left { handed_over } => {
            if *handed_over {
                info!(node, "left the ring");
            } else {
                warn!(
                    node,
                    "stopped with no successor to take its keys (the last node of the ring, or \
                     none answered): they stay in the data directory"
                );
            }
            return true;
        }
    }
    false
}

/// Log and count one of the data layer's events.
fn record_kv_event(me: &NodeRef, event: &kv::Event) {
    use kv::Event;
    let node = me.id.short();
    match event {
        Event::Copies { available, wanted } => {
            metrics::gauge!("chordkv_copies").set(*available as f64);
            if available < wanted {
                warn!(
                    node,
                    available,
                    wanted,
                    "fewer copies of each key than --replicas: the ring has too few nodes"
                );
            } else {
                info!(
                    node,
                    copies = available,
                    "every key has its full number of copies"
                );
            }
        }
        Event::TransferDone { to, keys } => {
            metrics::counter!("chordkv_keys_handed_over_total").increment(*keys);
            if *keys > 0 {
                info!(node, to = %to, keys, "handed keys over");
            }
        }
        Event::StorageError { error } => warn!(node, %error, "storage error"),
        Event::RepairFailed {
            with,
            what,
            keys,
            bytes,
            error,
            batch_bytes,
        } => {
            metrics::counter!("chordkv_repair_failures_total", "what" => *what).increment(1);
            warn!(
                node,
                peer = %with,
                what,
                keys,
                bytes,
                %error,
                batch_bytes,
                "a message carrying states failed; retrying with smaller batches"
            );
        }
        Event::Repaired { with, keys } => {
            metrics::counter!("chordkv_repaired_keys_total").increment(*keys);
            debug!(node, replica = %with, keys, "repaired a replica");
        }
        Event::SyncStep {
            nodes,
            keys_listed,
            states,
            ..
        } => {
            metrics::counter!("chordkv_sync_tree_nodes_total").increment(*nodes);
            metrics::counter!("chordkv_sync_keys_listed_total").increment(*keys_listed);
            metrics::counter!("chordkv_sync_states_total").increment(*states);
        }
        Event::Collected {
            with,
            keys,
            tombstones,
        } => {
            let kind = if *tombstones { "tombstone" } else { "stray" };
            metrics::counter!("chordkv_collected_keys_total", "kind" => kind).increment(*keys);
            debug!(node, peer = %with, keys, kind, "collected copies");
        }
        Event::ForgedDots {
            key,
            claimed,
            issued,
        } => {
            metrics::counter!("chordkv_forged_states_total").increment(1);
            warn!(
                node,
                key = %String::from_utf8_lossy(key),
                claimed,
                issued,
                "a peer's state claimed a version of ours beyond what we issued; left it out"
            );
        }
        Event::OwnDotsAhead {
            key,
            claimed,
            issued,
        } => {
            metrics::counter!("chordkv_own_dots_adopted_total").increment(1);
            debug!(
                node,
                key = %String::from_utf8_lossy(key),
                claimed,
                issued,
                "a peer holds versions of ours newer than this data directory remembers \
                 (restored from a backup?); numbering from above them"
            );
        }
        Event::ManySiblings { key, siblings } => {
            metrics::counter!("chordkv_sibling_warnings_total").increment(1);
            warn!(
                node,
                key = %String::from_utf8_lossy(key),
                siblings,
                "key has many concurrent versions; read it and write back with its context"
            );
        }
    }
}

/// The pooled connection to one peer; its lock makes concurrent senders share one connect.
type Slot = Arc<Mutex<Option<Channel>>>;

/// How often, at most, a peer's refusal of our credentials is logged.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often, at most, the peer pool drops the entries of peers no longer talked to.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Outbound requests to peers, over one pooled [`Channel`] per address.
#[derive(Clone)]
struct Peers {
    config: Config,
    dialer: Dialer,
    /// Peers we pretend we cannot reach (fault injection).
    blocked: Arc<std::sync::Mutex<HashSet<SocketAddr>>>,
    pool: Arc<Mutex<HashMap<SocketAddr, Slot>>>,
    /// When the pool was last pruned.
    pruned: Arc<std::sync::Mutex<Instant>>,
    /// When each peer that refused our credentials was last logged, to log it now and then.
    refused: Arc<std::sync::Mutex<HashMap<SocketAddr, Instant>>>,
    inputs: mpsc::Sender<Input>,
}

impl Peers {
    fn new(config: Config, inputs: mpsc::Sender<Input>) -> Peers {
        Peers {
            dialer: config.security.dialer(config.limits),
            config,
            blocked: Arc::default(),
            pool: Arc::default(),
            pruned: Arc::new(std::sync::Mutex::new(Instant::now())),
            refused: Arc::default(),
            inputs,
        }
    }

    /// Send `request` to `to` in the background; its answer returns to the core as an input.
    /// A request too large for a frame is never sent: its error is the answer, and the
    /// connection to `to` stays up.
    fn send(&self, to: SocketAddr, id: RequestId, request: Request) {
        let peers = self.clone();
        tokio::spawn(async move {
            let kind = request.kind();
            let response = peers.call(to, request).await;
            if let Err(e @ Error::TooLarge { what, .. }) = &response {
                if what == "request" {
                    metrics::counter!("chordkv_oversized_requests_total", "kind" => kind)
                        .increment(1);
                    warn!(peer = %to, kind, error = %e, "a request did not fit in a frame; not sent");
                }
            }
            if let Err(e @ Error::Unauthorized(_)) = &response {
                peers.refused_by(to, e);
            }
            let _ = peers.inputs.send(Input::Response { id, response }).await;
        });
    }

    /// One request to `to`, answered or failed within the RPC timeout, whatever it waits for:
    /// another sender's connect to the same peer, its own connect, a slot, the answer. So the
    /// requests queued for a peer that swallows packets all fail by their own deadlines (and
    /// drop their payloads), instead of one per timeout behind each other's connects.
    async fn call(&self, to: SocketAddr, request: Request) -> Result<Response> {
        let timeout = Duration::from_millis(self.config.node.ring.rpc_timeout);
        if self.is_blocked(to) {
            // A partition is silence, not a refusal.
            tokio::time::sleep(timeout).await;
            return Err(Error::Timeout(format!(
                "{to} did not answer (fault injection)"
            )));
        }
        let call = async {
            let slot = self.slot(to).await;
            let channel = {
                let mut slot = slot.lock().await;
                match slot.as_ref().filter(|c| !c.is_closed()) {
                    Some(c) => c.clone(),
                    None => {
                        let c = Channel::dial(to, &self.dialer, timeout).await?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            channel.call(request, timeout).await
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout(format!(
                    "no answer from {to} within {timeout:?}"
                )))
            })
    }

    /// Logs, at most every [`AUTH_LOG_EVERY`] per peer, that `to` and we do not accept each
    /// other's credentials: a misconfigured ring (or an impostor) an operator must hear of.
    fn refused_by(&self, to: SocketAddr, e: &Error) {
        metrics::counter!("chordkv_peer_auth_failures_total").increment(1);
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        if refused.len() > 4096 {
            refused.clear();
        }
        let due = refused
            .get(&to)
            .is_none_or(|at| at.elapsed() >= AUTH_LOG_EVERY);
        if due {
            refused.insert(to, Instant::now());
            warn!(peer = %to, error = %e, "cannot talk to a peer: the handshake failed");
        }
    }

    /// The pool's slot for `to`, made if need be. Now and then the pool drops the slots nobody
    /// holds whose connection is gone, so it keeps only peers still talked to.
    async fn slot(&self, to: SocketAddr) -> Slot {
        let mut pool = self.pool.lock().await;
        let prune = self
            .pruned
            .lock()
            .map(|mut at| {
                let due = at.elapsed() >= PRUNE_EVERY;
                if due {
                    *at = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        if prune {
            pool.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                        .unwrap_or(true)
            });
            metrics::gauge!("chordkv_peer_pool").set(pool.len() as f64);
        }
        pool.entry(to).or_default().clone()
    }
}

impl Peers {
    fn is_blocked(&self, to: SocketAddr) -> bool {
        self.blocked
            .lock()
            .map(|b| b.contains(&to))
            .unwrap_or(false)
    }

    fn block(&self, peers: Vec<SocketAddr>) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = peers.into_iter().collect();
        }
    }
}

/// How long a connection may take to finish TLS and the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections in their handshake at once; more are closed at once.
const MAX_HANDSHAKES: usize = 4096;

/// A connection idle at least this long may be closed to make room for a new one when its
/// budget is full.
const EVICT_IDLE: Duration = Duration::from_secs(1);

/// A connection's last sign of life, and how to tell it to close.
struct Activity {
    /// When it last read a frame or had an answer written, ms since the budget's epoch.
    last: AtomicU64,
    /// Notified when the connection is evicted.
    evicted: Notify,
}

/// One kind of connection's budget (peers', clients'): how many may be open at once. When it
/// is full, a new connection takes the place of the one idle longest, if that one has been
/// idle at least [`EVICT_IDLE`]; else the new one is refused.
struct Budget {
    kind: &'static str,
    max: usize,
    epoch: Instant,
    open: std::sync::Mutex<HashMap<ConnId, Arc<Activity>>>,
}

/// A place in a [`Budget`], given back when the connection ends.
struct Admitted {
    budget: Arc<Budget>,
    conn: ConnId,
    activity: Arc<Activity>,
}

impl Budget {
    fn new(kind: &'static str, max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            kind,
            max: max.max(1),
            epoch: Instant::now(),
            open: std::sync::Mutex::default(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A place for connection `conn`, or `None` if every place is taken by a connection active
    /// within [`EVICT_IDLE`].
    fn admit(self: &Arc<Budget>, conn: ConnId) -> Option<Admitted> {
        let now = self.now();
        let mut open = self.open.lock().ok()?;
        if open.len() >= self.max {
            let (&idlest, activity) = open
                .iter()
                .min_by_key(|(_, a)| a.last.load(Ordering::Relaxed))?;
            let idle = now.saturating_sub(activity.last.load(Ordering::Relaxed));
            if idle < EVICT_IDLE.as_millis() as u64 {
                return None;
            }
            // Stored if it is not waiting yet: it sees the notice at its next await.
            activity.evicted.notify_one();
            open.remove(&idlest);
            metrics::counter!("chordkv_connections_evicted_total", "role" => self.kind)
                .increment(1);
        }
        let activity = Arc::new(Activity {
            last: AtomicU64::new(now),
            evicted: Notify::new(),
        });
        open.insert(conn, Arc::clone(&activity));
        Some(Admitted {
            budget: Arc::clone(self),
            conn,
            activity,
        })
    }
}

impl Admitted {
    /// Notes a sign of life.
    fn touch(&self) {
        self.activity
            .last
            .store(self.budget.now(), Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    fn idle(&self) -> Duration {
        let last = self.activity.last.load(Ordering::Relaxed);
        Duration::from_millis(self.budget.now().saturating_sub(last))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut open) = self.budget.open.lock() {
            // An evicted connection's place may belong to another by now.
            if open
                .get(&self.conn)
                .is_some_and(|a| Arc::ptr_eq(a, &self.activity))
            {
                open.remove(&self.conn);
            }
        }
    }
}

/// What every connection's task shares: where inputs go, the bounds, who may connect.
#[derive(Clone)]
struct Intake {
    inputs: mpsc::Sender<Input>,
    config: Config,
    /// Fault injection's handle on the outbound traffic, if it is allowed.
    faults: Option<Peers>,
    peers: Arc<Budget>,
    clients: Arc<Budget>,
    /// Bytes of requests read but not yet handled by the core (BOUNDS).
    input_bytes: Arc<Semaphore>,
}

/// The most bytes of requests waiting for the core at once, for a frame bound of `max_frame`.
fn input_budget(max_frame: usize) -> usize {
    (64usize << 20).max(4 * (max_frame + wire::PREFIX_LEN))
}

/// Accept connections, each served by [`serve_connection`] once its handshake is done.
async fn accept_loop(listener: TcpListener, core: local::Core, config: Config, peers: Peers) {
    let intake = Intake {
        faults: config.allow_fault_injection.then_some(peers),
        peers: Budget::new("node", config.max_peer_connections),
        clients: Budget::new("client", config.max_connections),
        input_bytes: core.input_bytes,
        inputs: core.inputs,
        config,
    };
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
            metrics::counter!("chordkv_connections_refused_total", "why" => "handshakes")
                .increment(1);
            continue;
        };
        // One count for these and the local connections (the RESP gateway's).
        let conn: ConnId = core.conn_ids.fetch_add(1, Ordering::Relaxed);
        let intake = intake.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match &intake.config.security.tls_server {
                Some(tls) => {
                    let tls = tls.clone();
                    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream));
                    match accepted.await {
                        Ok(Ok(stream)) => admit(stream, peer, conn, intake, handshaking).await,
                        Ok(Err(e)) => {
                            metrics::counter!("chordkv_handshakes_failed_total", "why" => "tls")
                                .increment(1);
                            debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => admit(stream, peer, conn, intake, handshaking).await,
            }
        });
    }
}

/// A connection's handshake, then its place in its role's budget, then its service.
async fn admit<S>(
    mut stream: S,
    peer: SocketAddr,
    conn: ConnId,
    intake: Intake,
    handshaking: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let gate = &intake.config.security.gate;
    let (role, access) = match wire::handshake::accept(&mut stream, gate, HANDSHAKE_TIMEOUT).await {
        Ok(x) => x,
        Err(e) => {
            let why = match e {
                Error::Unauthorized(_) => "unauthorized",
                Error::Timeout(_) => "timeout",
                _ => "invalid",
            };
            metrics::counter!("chordkv_handshakes_failed_total", "why" => why).increment(1);
            if why == "unauthorized" {
                warn!(%peer, error = %e, "handshake refused");
            } else {
                debug!(%peer, error = %e, "handshake refused");
            }
            return;
        }
    };
    drop(handshaking);
    let budget = match role {
        Role::Node => &intake.peers,
        Role::Client => &intake.clients,
    };
    let Some(admitted) = budget.admit(conn) else {
        let why = format!("too many {role} connections; retry later");
        return refuse(stream, intake.config.limits, &why).await;
    };
    let label = match role {
        Role::Node => "node",
        Role::Client => "client",
    };
    metrics::counter!("chordkv_connections_total", "role" => label).increment(1);
    serve_connection(stream, peer, conn, access, admitted, intake).await;
}

/// Buffer one answer for a connection. One that does not fit a frame goes as an error answer to
/// its request instead ([`wire::encode_answer`]), counted and logged: the connection stays up,
/// so the other calls multiplexed on it, and the peer's view of us, are not lost with it.
///
/// # Errors
/// As [`FrameWriter::feed_answer`]: the connection is unusable then.
async fn feed_answer<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut FrameWriter<W>,
    envelope: &Envelope,
    peer: SocketAddr,
) -> Result<()> {
    if let Some(e) = writer.feed_answer(envelope).await? {
        metrics::counter!("chordkv_oversized_responses_total").increment(1);
        let id = match envelope {
            Envelope::Response { id, .. } | Envelope::Request { id, .. } => *id,
        };
        warn!(%peer, id, error = %e, "a response did not fit in a frame; answered with an error");
    }
    Ok(())
}

/// Tell a connection past its handshake that we are at our limit, then close it.
async fn refuse<S: AsyncWrite + Unpin>(stream: S, limits: Limits, why: &str) {
    metrics::counter!("chordkv_connections_refused_total", "why" => "budget").increment(1);
    let mut writer = FrameWriter::new(stream, limits.max_frame);
    let notice = Envelope::Response {
        id: wire::NOTICE_ID,
        body: Err(Error::Overloaded(why.into())),
    };
    let _ = writer.write_frame(&notice).await;
    let _ = writer.shutdown().await;
}

/// One connection past its handshake: read requests and hand them to the core, each checked
/// against the connection's `access`; a writer task sends the answers. A frame that cannot be
/// parsed ends the connection with an error notice, and so do idleness and eviction.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    conn: ConnId,
    access: Access,
    admitted: Admitted,
    intake: Intake,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Intake {
        inputs,
        config,
        faults,
        input_bytes,
        ..
    } = intake;
    let limits = config.limits;
    let admitted = Arc::new(admitted);
    let (rd, wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Envelope>(1024);
    let max_frame = limits.max_frame;
    let writer = {
        let admitted = Arc::clone(&admitted);
        tokio::spawn(async move {
            let mut writer = FrameWriter::new(wr, max_frame);
            while let Some(env) = rx.recv().await {
                let mut result = feed_answer(&mut writer, &env, peer).await;
                // Batch whatever else is ready into the same flush.
                while let (Ok(()), Ok(more)) = (&result, rx.try_recv()) {
                    result = feed_answer(&mut writer, &more, peer).await;
                }
                if let Err(e) = result.and(writer.flush().await) {
                    debug!(%peer, error = %e, "write failed");
                    break;
                }
                admitted.touch();
            }
            let _ = writer.shutdown().await;
        })
    };
    if inputs
        .send(Input::Open {
            conn,
            tx: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let mut reader = FrameReader::new(rd, max_frame);
    let idle = config.idle_timeout;
    let closing: Option<Error> = loop {
        let frame = tokio::select! {
            frame = reader.read_frame() => frame,
            // The core stopped (a failed flush, or the end of `run`): close, as a crash would.
            () = inputs.closed() => break None,
            () = admitted.activity.evicted.notified() => {
                break Some(Error::Overloaded(
                    "closed to make room for a new connection: this one was idle".into(),
                ));
            }
            () = tokio::time::sleep(idle.saturating_sub(admitted.idle())) => {
                if admitted.idle() < idle {
                    continue;
                }
                metrics::counter!("chordkv_connections_idle_closed_total").increment(1);
                break Some(Error::Unavailable(format!(
                    "closed after {idle:?} without a request"
                )));
            }
        };
        admitted.touch();
        match frame {
            Ok(None) => break None,
            Ok(Some(Envelope::Request {
                id,
                body: Request::Block { peers },
            })) => {
                let body = match &faults {
                    Some(p) => {
                        warn!(%peer, blocked = ?peers, "fault injection: dropping traffic to peers");
                        p.block(peers);
                        Ok(Response::Ack)
                    }
                    None => Err(Error::InvalidInput(
                        "fault injection is disabled; start the node with --allow-fault-injection"
                            .into(),
                    )),
                };
                let _ = tx.send(Envelope::Response { id, body }).await;
            }
            Ok(Some(Envelope::Request { id, body })) => {
                metrics::counter!("chordkv_messages_in_total", "kind" => body.kind()).increment(1);
                if !access.permits(&body) {
                    metrics::counter!(
                        "chordkv_requests_forbidden_total",
                        "kind" => body.kind(),
                        "access" => access.name()
                    )
                    .increment(1);
                    debug!(%peer, kind = body.kind(), access = access.name(), "request refused");
                    let e = access.refusal(&body);
                    let _ = tx.send(Envelope::Response { id, body: Err(e) }).await;
                    continue;
                }
                if let Err(e) = limits.check_request(&body) {
                    let _ = tx.send(Envelope::Response { id, body: Err(e) }).await;
                    continue;
                }
                let size = u32::try_from(reader.last_frame_len()).unwrap_or(u32::MAX);
                let Ok(cost) = Arc::clone(&input_bytes).acquire_many_owned(size).await else {
                    break None;
                };
                let input = Input::Request {
                    conn,
                    id,
                    request: body,
                    cost,
                };
                if inputs.send(input).await.is_err() {
                    break None;
                }
            }
            // Either way the connection is unusable: say why, then close it.
            other => {
                let e = match other {
                    Err(e) => e,
                    _ => Error::InvalidData(
                        "unexpected response frame: this connection only takes requests".into(),
                    ),
                };
                metrics::counter!("chordkv_bad_frames_total").increment(1);
                debug!(%peer, error = %e, "bad frame; closing the connection");
                break Some(e);
            }
        }
    };
    if let Some(e) = closing {
        let notice = Envelope::Response {
            id: wire::NOTICE_ID,
            body: Err(e),
        };
        let _ = tx.send(notice).await;
    }
    let _ = inputs.send(Input::Close { conn }).await;
    drop(tx);
    let _ = writer.await;
}

pub(crate) mod local;

#[cfg(test)]
mod tests;
