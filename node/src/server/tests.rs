//! Server tests over real loopback sockets, with storages chosen by the test ([`serve`]).

use super::*;
use crate::id::in_half_open;
use crate::storage::MemoryStorage;
use crate::testing::faulty::{Faults, FaultyStorage};
use crate::version::VersionVector;
use std::sync::{Condvar, Mutex as StdMutex};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for anything: a ring to form, an answer, a node to stop.
const T: Duration = Duration::from_secs(20);

/// A server running in this process.
struct Running {
    addr: SocketAddr,
    task: JoinHandle<Result<()>>,
    stop: oneshot::Sender<()>,
}

impl Running {
    /// Waits for the server to return by itself (without being told to stop).
    async fn stopped(self) -> Result<()> {
        let Running { task, stop, .. } = self;
        let result = tokio::time::timeout(T, task).await;
        drop(stop);
        result
            .expect("the node stops by itself")
            .expect("the server task does not panic")
    }

    /// Tells the server to leave and waits for it.
    async fn shut_down(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(T, self.task)
            .await
            .expect("the node shuts down in time")
            .expect("the server task does not panic")
    }
}

/// Quick timers, N = 2, W = 2, so a two-node ring forms and replicates in well under a second.
fn options() -> Options {
    let mut opts = Options::default();
    opts.ring.stabilize_interval = 50;
    opts.ring.fix_fingers_interval = 50;
    opts.ring.detector.interval = 100;
    opts.kv.replicas = 2;
    opts.kv.write_quorum = 2;
    opts.kv.read_quorum = 1;
    opts
}

/// Starts node `id` on `storage`, joining through `bootstrap`.
async fn start<S: Storage + 'static>(
    id: Id,
    storage: S,
    bootstrap: Option<SocketAddr>,
    limits: Limits,
) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::new(addr, PathBuf::from("(in memory)"));
    config.bootstrap = bootstrap;
    config.node = options();
    config.limits = limits;
    config.tick = Duration::from_millis(10);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(serve(config, listener, storage, id, shutdown));
    Running { addr, task, stop }
}

async fn client(addr: SocketAddr) -> Channel {
    Channel::connect(addr, Role::Client, Limits::client(), T)
        .await
        .expect("connect")
}

/// A connection that says it is a node: what an open node (no cluster secret) takes as one.
async fn as_node(addr: SocketAddr) -> Channel {
    Channel::connect(addr, Role::Node, Limits::client(), T)
        .await
        .expect("connect")
}

async fn status(channel: &Channel) -> Option<crate::message::NodeStatus> {
    match channel.call(Request::Status, T).await {
        Ok(Response::Status(s)) => Some(s),
        _ => None,
    }
}

/// Polls until `done` holds for the status of every node, or panics after [`T`].
async fn wait_for(
    channels: &[&Channel],
    what: &str,
    done: impl Fn(&crate::message::NodeStatus) -> bool,
) {
    let deadline = Instant::now() + T;
    loop {
        let mut all = true;
        for c in channels {
            all &= status(c).await.is_some_and(|s| done(&s));
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(key: &[u8], w: u8) -> Request {
    Request::Put {
        key: key.to_vec(),
        value: b"value".to_vec(),
        context: VersionVector::new(),
        w: Some(w),
        session: None,
        mode: Default::default(),
    }
}

fn id(byte: u8) -> Id {
    Id([byte; 20])
}

/// A faulty memory storage, with the switch to make its flushes fail.
fn faulty() -> (FaultyStorage<MemoryStorage>, Faults) {
    FaultyStorage::new(MemoryStorage::new())
}

fn assert_stopped_on_the_flush(result: Result<()>) {
    match result {
        Err(Error::Io(msg)) => assert!(msg.contains("flush failed"), "{msg}"),
        other => panic!("expected the node to stop on its failed flush, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_stops_the_node_before_it_acknowledges_the_write() {
    let (storage, faults) = faulty();
    let node = start(id(0x80), storage, None, Limits::default()).await;
    let c = client(node.addr).await;
    wait_for(&[&c], "a ring of one", |s| s.joined).await;
    let first = c.call(put(b"before", 1), T).await;
    assert!(first.is_ok(), "{first:?}");

    faults.fail_flushes(true);
    let got = c.call(put(b"during", 1), T).await;
    assert!(
        got.is_err(),
        "a write whose flush failed was acknowledged: {got:?}"
    );
    assert!(faults.failed_flushes() >= 1);
    assert_stopped_on_the_flush(node.stopped().await);
    assert!(
        c.call(Request::Status, T).await.is_err(),
        "connections close"
    );
}

/// A ring of two, each the other's replica: an owner on `storage`, a replica in memory, a
/// client of each, and a key of the owner's range (replica, owner].
struct Pair {
    owner: Running,
    replica: Running,
    a: Channel,
    b: Channel,
    key: Vec<u8>,
}

async fn owner_and_replica<S: Storage + 'static>(storage: S) -> Pair {
    let (owner_id, replica_id) = (id(0x80), id(0x40));
    let owner = start(owner_id, storage, None, Limits::default()).await;
    let replica = start(
        replica_id,
        MemoryStorage::new(),
        Some(owner.addr),
        Limits::default(),
    )
    .await;
    // `b` reads the replica's own copy, a node-to-node request.
    let (a, b) = (client(owner.addr).await, as_node(replica.addr).await);
    wait_for(&[&a, &b], "a ring of two, each the other's replica", |s| {
        s.joined && s.pred.is_some() && s.replicas == 2
    })
    .await;
    let key = (0..)
        .map(|i: u32| format!("key{i}").into_bytes())
        .find(|k| in_half_open(replica_id, owner_id, Id::hash(k)))
        .expect("some key falls in the owner's range");
    Pair {
        owner,
        replica,
        a,
        b,
        key,
    }
}

/// The owner of a W = 2 write acknowledges it in a later batch than the one that stored it
/// (when its replica answers): a failed flush of the first batch must stop that answer too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_answer_after_a_failed_flush_does_not_acknowledge_the_write() {
    let (storage, faults) = faulty();
    let Pair {
        owner,
        replica,
        a,
        b,
        key,
    } = owner_and_replica(storage).await;
    let first = a.call(put(&key, 2), T).await;
    assert!(first.is_ok(), "{first:?}");

    faults.fail_flushes(true);
    let got = a.call(put(&key, 2), T).await;
    assert!(
        got.is_err(),
        "a write whose flush failed was acknowledged: {got:?}"
    );
    assert_stopped_on_the_flush(owner.stopped().await);
    drop(b);
    let _ = replica.shut_down().await;
}

/// What a [`Gated`] storage saw, and the gate its flushes pass.
#[derive(Debug, Default)]
struct GateState {
    open: bool,
    /// Flushes waiting at the closed gate.
    waiting: u32,
    /// Every key put, in order.
    puts: Vec<Vec<u8>>,
    /// Writes made, and how many of them the last completed flush began after.
    writes: u64,
    flushed: u64,
}

/// The test's side of a [`Gated`] storage.
#[derive(Clone, Debug, Default)]
struct Gate {
    state: Arc<(StdMutex<GateState>, Condvar)>,
}

impl Gate {
    fn set(&self, open: bool) {
        let (state, changed) = &*self.state;
        state.lock().expect("gate lock").open = open;
        changed.notify_all();
    }

    fn with<T>(&self, f: impl FnOnce(&mut GateState) -> T) -> T {
        f(&mut self.state.0.lock().expect("gate lock"))
    }

    /// One flush: blocks while the gate is closed; covers the writes made before it began.
    fn flush(&self) {
        let (state, changed) = &*self.state;
        let mut s = state.lock().expect("gate lock");
        let covers = s.writes;
        s.waiting += 1;
        while !s.open {
            s = changed.wait(s).expect("gate lock");
        }
        s.waiting -= 1;
        s.flushed = s.flushed.max(covers);
    }

    /// Polls until `done` holds, or panics after [`T`].
    async fn until(&self, what: &str, done: impl Fn(&GateState) -> bool) {
        let deadline = Instant::now() + T;
        while !self.with(|s| done(s)) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A memory storage whose flushes wait at a [`Gate`] the test opens and closes, and which
/// records its writes.
struct Gated {
    inner: MemoryStorage,
    gate: Gate,
}

/// A gated storage, its gate open.
fn gated() -> (Gated, Gate) {
    let gate = Gate::default();
    gate.set(true);
    let storage = Gated {
        inner: MemoryStorage::new(),
        gate: gate.clone(),
    };
    (storage, gate)
}

impl Storage for Gated {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.gate.with(|s| {
            s.writes += 1;
            s.puts.push(key.to_vec());
        });
        self.inner.put(key, value)
    }
    fn delete(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.gate.with(|s| s.writes += 1);
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
        self.gate.flush();
        Ok(())
    }
    fn flush_handle(&self) -> FlushHandle {
        let gate = self.gate.clone();
        Box::new(move || {
            gate.flush();
            Ok(())
        })
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_meta(name)
    }
    fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<()> {
        self.gate.with(|s| s.writes += 1);
        self.inner.set_meta(name, value)
    }
}

/// How long a test gives an answer that must not come, to show that it does not: an answer
/// released too early would arrive within a millisecond or two on loopback.
const NOT_YET: Duration = Duration::from_millis(150);

fn get(key: &[u8]) -> Request {
    Request::Get {
        key: key.to_vec(),
        r: None,
        session: None,
    }
}

/// The acknowledgement rule of GROUP COMMIT, and the core serving on while a flush is in flight
/// (before the pipeline, the core waited for every flush and took no input meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_waits_for_its_flush_while_the_core_serves_on() {
    let (storage, gate) = gated();
    let node = start(id(0x80), storage, None, Limits::default()).await;
    let (c, d) = (client(node.addr).await, client(node.addr).await);
    wait_for(&[&c], "a ring of one", |s| s.joined).await;
    let first = c.call(put(b"before", 1), T).await;
    assert!(first.is_ok(), "{first:?}");

    gate.set(false);
    let call = |channel: &Channel, request: Request| {
        let channel = channel.clone();
        tokio::spawn(async move { channel.call(request, T).await })
    };
    let a = call(&c, put(b"a", 1));
    gate.until("write a stored and a flush held at the gate", |s| {
        s.puts.iter().any(|k| k == b"a") && s.waiting > 0
    })
    .await;
    // The core takes a new input while the flush is held: another write reaches the storage.
    let b = call(&d, put(b"b", 1));
    gate.until("write b stored while the flush is held", |s| {
        s.puts.iter().any(|k| k == b"b")
    })
    .await;
    // Every answer made after an unflushed write waits, a status too (GROUP COMMIT says why).
    let status = call(&d, Request::Status);
    tokio::time::sleep(NOT_YET).await;
    assert!(
        !a.is_finished() && !b.is_finished() && !status.is_finished(),
        "an answer left while the flush of an earlier write was held"
    );

    gate.set(true);
    for (what, answer) in [("a", a), ("b", b), ("status", status)] {
        let answer = answer.await.expect("the call does not panic");
        assert!(answer.is_ok(), "{what}: {answer:?}");
    }

    // A write-free moment: with everything written durable, a read answers with the gate shut.
    gate.until("every write flushed", |s| {
        s.flushed == s.writes && s.waiting == 0
    })
    .await;
    gate.set(false);
    let read = c.call(get(b"a"), T).await;
    gate.set(true);
    match read {
        Ok(Response::Read(reply)) => assert_eq!(reply.values, vec![b"value".to_vec()]),
        other => panic!("expected the value of a, got {other:?}"),
    }
    let _ = node.shut_down().await;
}

/// Replication goes out before the local flush: a replica stores an owner's write while the
/// owner's flush is still held, and the owner's acknowledgement still waits for that flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_runs_while_the_owner_flushes_and_the_answer_waits_for_both() {
    let (storage, gate) = gated();
    let Pair {
        owner,
        replica,
        a,
        b,
        key,
    } = owner_and_replica(storage).await;

    gate.set(false);
    let write = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.call(put(&key, 2), T).await })
    };
    // Read the replica's own copy directly (no quorum, no owner involved).
    let deadline = Instant::now() + T;
    loop {
        let copy = b.call(Request::ReplicaRead { key: key.clone() }, T).await;
        if matches!(copy, Ok(Response::State(Some(_)))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never got the write while the owner's flush was held: {copy:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(gate.with(|s| s.waiting > 0), "the owner's flush is held");
    tokio::time::sleep(NOT_YET).await;
    assert!(
        !write.is_finished(),
        "the write was acknowledged before the owner's flush completed"
    );
    gate.set(true);
    let got = write.await.expect("the call does not panic");
    assert!(got.is_ok(), "{got:?}");
    let _ = replica.shut_down().await;
    let _ = owner.shut_down().await;
}

/// Serves one connection on a real socket, with the test as the core: each `Get` is answered
/// with a value of as many bytes as its key names (in decimal).
async fn serve_sized_answers(limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (inputs, mut core) = mpsc::channel::<Input>(16);
    let mut config = Config::new(addr, std::env::temp_dir());
    config.limits = limits;
    let intake = Intake {
        inputs,
        faults: None,
        peers: Budget::new("node", 4),
        clients: Budget::new("client", 4),
        input_bytes: Arc::new(Semaphore::new(input_budget(limits.max_frame))),
        config,
    };
    tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.expect("accept");
        let gate = crate::auth::Gate::default();
        let (_, access) = wire::handshake::accept(&mut stream, &gate, T)
            .await
            .expect("handshake");
        let admitted = intake.clients.admit(1).expect("room");
        serve_connection(stream, peer, 1, access, admitted, intake).await;
    });
    tokio::spawn(async move {
        let mut answers = None;
        while let Some(input) = core.recv().await {
            match input {
                Input::Open { tx, .. } => answers = Some(tx),
                Input::Request {
                    id,
                    request: Request::Get { key, .. },
                    ..
                } => {
                    let size: usize = String::from_utf8_lossy(&key).parse().expect("a size");
                    let body = Ok(Response::State(Some(vec![7; size])));
                    if let Some(tx) = &answers {
                        let _ = tx.send(Envelope::Response { id, body }).await;
                    }
                }
                _ => {}
            }
        }
    });
    addr
}

fn get_sized(size: usize) -> Request {
    Request::Get {
        key: size.to_string().into_bytes(),
        r: None,
        session: None,
    }
}

#[tokio::test]
async fn an_oversized_response_is_an_error_answer_on_a_live_connection() {
    let limits = Limits {
        max_frame: 64 << 10,
        max_key: 64,
        max_value: 32 << 10,
    };
    limits.validate().expect("valid limits");
    let addr = serve_sized_answers(limits).await;
    let c = client(addr).await;
    // Calls in flight together on the one connection: only the oversized one fails.
    let (small, big) = tokio::join!(c.call(get_sized(10), T), c.call(get_sized(100 << 10), T));
    assert_eq!(small, Ok(Response::State(Some(vec![7; 10]))));
    match big {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!((what.as_str(), limit), ("response", 64 << 10));
            assert!(size > 100 << 10, "names the response's size: {size}");
        }
        other => panic!("expected an error answer naming the size, got {other:?}"),
    }
    assert!(!c.is_closed(), "the connection stays up");
    let next = c.call(get_sized(1000), T).await;
    assert_eq!(next, Ok(Response::State(Some(vec![7; 1000]))));
}

/// Requests queued for a peer that accepts connections and then says nothing (a blackhole)
/// each fail by their own deadline, not one per timeout behind each other's connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_silent_peer_fail_by_their_own_deadlines() {
    const TIMEOUT_MS: u64 = 300;
    const QUEUED: u64 = 12;
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let to = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut config = Config::new(to, std::env::temp_dir());
    config.node.ring.rpc_timeout = TIMEOUT_MS;
    let (inputs, mut answers) = mpsc::channel::<Input>(64);
    let peers = Peers::new(config, inputs);
    let began = Instant::now();
    for id in 1..=QUEUED {
        peers.send(to, id, Request::Ping);
    }
    let mut failed = 0;
    while failed < QUEUED {
        match answers.recv().await {
            Some(Input::Response { response, .. }) => {
                assert!(matches!(response, Err(Error::Timeout(_))), "{response:?}");
                failed += 1;
            }
            Some(_) => {}
            None => panic!("the answers channel closed"),
        }
    }
    // Queued one behind the other, the last would fail after QUEUED timeouts (3.6 s).
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(4 * TIMEOUT_MS),
        "{QUEUED} requests to a silent peer took {took:?} to fail"
    );
    held.abort();
}
