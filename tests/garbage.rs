//! Garbage on a live node's connections: random byte streams written into a real
//! `chordkv-node` process never crash it and never disturb another connection. After each
//! stream a client connected before them all still writes and reads a key, and the node still
//! answers a status request on a fresh connection.
//!
//! The streams are of four shapes, so that they reach past the handshake and the framing into
//! the decoder: raw bytes; a good hello and raw bytes; a good hello and one frame of random
//! body (right length prefix); a good hello and a length prefix of any size, up to the hard
//! bound, followed by fewer bytes than it announced. A random body that happens to decode to a
//! request that changes something (a `Notify` naming a made-up node could legitimately
//! reroute the ring) is not sent: what is tested is the decoder's robustness, not the
//! protocol's trust in its peers.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use chordkv_node::message::{Envelope, Request};
use chordkv_node::wire::{HARD_MAX_FRAME, Role, encode_hello, parse_frame};
use common::Cluster;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// How long one garbage connection may take to be written and closed by the node.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// One stream of garbage, as written into a fresh connection.
#[derive(Clone, Debug)]
enum Garbage {
    /// Bytes from the first one: the hello is garbage too.
    Raw(Vec<u8>),
    /// A good hello, then bytes.
    AfterHello(Role, Vec<u8>),
    /// A good hello, then one frame of this body.
    Frame(Role, Vec<u8>),
    /// A good hello, then a prefix announcing this length, then these bytes.
    Announce(Role, u32, Vec<u8>),
}

impl Garbage {
    fn bytes(&self) -> Vec<u8> {
        let hello = |role: &Role| encode_hello(*role).to_vec();
        match self {
            Garbage::Raw(b) => b.clone(),
            Garbage::AfterHello(role, b) => [hello(role), b.clone()].concat(),
            Garbage::Frame(role, body) => {
                let len = (body.len() as u32).to_be_bytes().to_vec();
                [hello(role), len, body.clone()].concat()
            }
            Garbage::Announce(role, len, b) => {
                [hello(role), len.to_be_bytes().to_vec(), b.clone()].concat()
            }
        }
    }

    /// Whether every frame in the stream that decodes at all is a request that changes nothing:
    /// others are not garbage but (made-up) protocol, which a node is right to act on.
    fn harmless(&self) -> bool {
        let mut rest = match self {
            Garbage::Raw(_) => return true,
            Garbage::AfterHello(_, b) => b.as_slice(),
            Garbage::Frame(..) | Garbage::Announce(..) => return self.harmless_frames(),
        };
        while let Ok(Some((envelope, used))) = parse_frame(rest, HARD_MAX_FRAME) {
            if !read_only(&envelope) {
                return false;
            }
            rest = &rest[used..];
        }
        true
    }

    fn harmless_frames(&self) -> bool {
        let bytes = self.bytes();
        match parse_frame(&bytes[encode_hello(Role::Node).len()..], HARD_MAX_FRAME) {
            Ok(Some((envelope, _))) => read_only(&envelope),
            _ => true,
        }
    }
}

/// A request that reads, or a response (which a server does not take).
fn read_only(envelope: &Envelope) -> bool {
    match envelope {
        Envelope::Response { .. } => true,
        Envelope::Request { body, .. } => matches!(
            body,
            Request::Ping
                | Request::GetNeighbors
                | Request::Status
                | Request::Lookup { .. }
                | Request::Get { .. }
                | Request::StoreGet { .. }
                | Request::ReplicaRead { .. }
                | Request::FindSuccessor { .. }
        ),
    }
}

fn garbage() -> impl Strategy<Value = Garbage> {
    let role = prop_oneof![Just(Role::Node), Just(Role::Client)];
    let bytes = || proptest::collection::vec(any::<u8>(), 0..2048);
    // Bodies that start like an envelope (a request or response tag, a small id) get further.
    let body = prop_oneof![
        bytes(),
        (0u8..2, 0u8..4, bytes()).prop_map(|(tag, id, b)| [vec![tag, id], b].concat()),
    ];
    prop_oneof![
        bytes().prop_map(Garbage::Raw),
        (role.clone(), bytes()).prop_map(|(r, b)| Garbage::AfterHello(r, b)),
        (role.clone(), body).prop_map(|(r, b)| Garbage::Frame(r, b)),
        (role, 0..=HARD_MAX_FRAME as u32 + 1, bytes())
            .prop_map(|(r, len, b)| Garbage::Announce(r, len, b)),
    ]
}

/// Writes `bytes` into a fresh connection to `addr`, closes our side and reads until the node
/// closes its own. Errors are expected (the node may reset the connection as soon as it sees a
/// bad byte) and ignored: only what happens to the node afterwards matters.
fn spray(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, STREAM_TIMEOUT) else {
        panic!("node at {addr} refused a connection");
    };
    let _ = stream.set_write_timeout(Some(STREAM_TIMEOUT));
    let _ = stream.set_read_timeout(Some(STREAM_TIMEOUT));
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn garbage_streams_never_crash_a_node_nor_disturb_another_connection() {
    // One node that keeps one copy, so that a put needs nobody else.
    let cluster = Cluster::start_with(1, &["--replicas", "1"]);
    let addr = cluster.addr(0);
    // Connected before all the garbage, used after each stream.
    let client = cluster.client(0);
    let mut runner = TestRunner::new(Config {
        cases: 256,
        // Each case costs a connection and a put; a failure shrinks a little, not for minutes.
        max_shrink_iters: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let sent = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&garbage(), |g| {
        if !g.harmless() {
            return Err(TestCaseError::reject(
                "decodes to a request that changes something",
            ));
        }
        spray(addr, &g.bytes());
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let key = format!("after-garbage-{n}");
        let value = format!("value {n}");
        cluster
            .block_on(client.put(key.as_bytes(), value.as_bytes()))
            .map_err(|e| TestCaseError::fail(format!("put after {g:?}: {e}")))?;
        let read = cluster
            .block_on(client.get(key.as_bytes()))
            .map_err(|e| TestCaseError::fail(format!("get after {g:?}: {e}")))?;
        prop_assert_eq!(read.as_deref(), Some(value.as_bytes()));
        cluster
            .status(0)
            .map_err(|e| TestCaseError::fail(format!("node gone after {g:?}: {e}")))?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nnode log:\n{}", cluster.log_tail(0));
    }
}
