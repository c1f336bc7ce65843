//! End-to-end tests: real `chordkv-node` processes on loopback ports, each in its own temporary
//! data directory, driven with the real `kvctl` binary and the `kvctl` client library.
//!
//! Each test is named after the claim it checks. Ring convergence is always awaited by polling a
//! condition with a deadline ([`common::wait_until`]), never by sleeping. Nodes run with the
//! default three copies of every key, so a crashed node's keys stay readable from its replicas.

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use chordkv_node::message::Envelope;
use chordkv_node::storage::{SledStorage, Storage};
use chordkv_node::wire::handshake::{OPEN_ANSWER_LEN, open_connector_bytes};
use chordkv_node::wire::{self, HARD_MAX_FRAME, NOTICE_ID, Role};
use common::{
    CONVERGE, Cluster, assert_prints, free_addr, ids, kvctl, put_all, stderr, total_keys,
    wait_until,
};
use kvctl::{Client, Error, Id, RingMember};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Keys and the values expected under them.
type Data = BTreeMap<String, Vec<u8>>;

/// `n` distinct keys with distinct values.
fn data(n: usize) -> Data {
    (0..n)
        .map(|i| (format!("key-{i:04}"), format!("value-{i}").into_bytes()))
        .collect()
}

/// Reads every key of `data` through node `via` (all at once over one connection) and returns
/// a description of each key whose value is not the expected one.
fn misreads(cluster: &Cluster, via: usize, data: &Data) -> Vec<String> {
    let client = cluster.client(via);
    cluster.block_on(async {
        let mut tasks = JoinSet::new();
        for (key, want) in data.clone() {
            let client = client.clone();
            tasks.spawn(async move {
                match client.get(key.as_bytes()).await {
                    Ok(Some(got)) if got == want => None,
                    Ok(got) => Some(format!("{key}: got {got:?}, want {want:?}")),
                    Err(e) => Some(format!("{key}: {e}")),
                }
            });
        }
        let mut wrong = Vec::new();
        while let Some(done) = tasks.join_next().await {
            wrong.extend(done.expect("a get task does not panic"));
        }
        wrong.sort();
        wrong
    })
}

/// Asserts every key of `data` reads back with its value through each node of `via`.
#[track_caller]
fn assert_all_readable(cluster: &Cluster, via: &[usize], data: &Data) {
    for &i in via {
        let wrong = misreads(cluster, i, data);
        assert!(
            wrong.is_empty(),
            "{} of {} keys misread through node {i}, e.g. {:?}",
            wrong.len(),
            data.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}

/// Waits until the nodes of the ring (converged with `members`) hold `n` keys in all: a join or
/// leave may still be moving keys, and a node keeps its copies until the receiver acknowledged
/// them.
fn wait_for_total_keys(cluster: &Cluster, members: &[usize], n: u64) {
    wait_until(CONVERGE, &format!("key counts summing to {n}"), || {
        let view = cluster.converged(members)?;
        match total_keys(&view) {
            total if total == n => Ok(()),
            total => Err(format!("the nodes hold {total} keys")),
        }
    });
}

/// The member of `members` other than node 0 that owns the most keys, with its count.
fn busiest_node(cluster: &Cluster, members: &[usize]) -> (usize, u64) {
    members
        .iter()
        .filter(|&&i| i != 0)
        .map(|&i| {
            let status = cluster.status(i).expect("a running node answers");
            (i, status.owned)
        })
        .max_by_key(|&(_, keys)| keys)
        .expect("there is a node other than node 0")
}

#[test]
fn five_node_ring_forms_in_id_order() {
    let cluster = Cluster::start(5);
    // Once predecessors and successors agree, successor lists still fill over a few more
    // stabilize rounds; with r = 8 > 4 each ends up naming all four other nodes.
    let view = wait_until(CONVERGE, "full successor lists", || {
        let view = cluster.converged(&cluster.all())?;
        for member in &view.nodes {
            let status = member.status().ok_or("a node did not answer")?;
            if status.succs.len() != 4 {
                return Err(format!(
                    "node {} has {} successors",
                    status.node,
                    status.succs.len()
                ));
            }
        }
        Ok(view)
    });

    // Each node's id is the SHA-1 of the address it advertises (a first start, no --node-id).
    for member in &view.nodes {
        let node = member.node();
        assert_eq!(
            node.id,
            Id::hash(node.addr.to_string().as_bytes()),
            "{node}"
        );
    }

    // Walking successors from node 0 visits the nodes by increasing id, wrapping past zero once.
    let mut sorted = ids(&view);
    sorted.sort();
    let start = sorted
        .iter()
        .position(|&id| id == view.nodes[0].node().id)
        .expect("the start node is on the ring");
    sorted.rotate_left(start);
    assert_eq!(ids(&view), sorted, "walk order is not id order");

    // Each node's predecessor is the previous node and its successors the following ones.
    let nodes: Vec<_> = view.nodes.iter().map(RingMember::node).collect();
    let n = nodes.len();
    for (k, member) in view.nodes.iter().enumerate() {
        let status = member.status().expect("every node answered");
        assert_eq!(
            status.pred,
            Some(nodes[(k + n - 1) % n]),
            "{}'s pred",
            status.node
        );
        let following: Vec<_> = (1..n).map(|d| nodes[(k + d) % n]).collect();
        assert_eq!(status.succs, following, "{}'s successors", status.node);
    }
}

#[test]
fn thousand_keys_put_through_one_node_read_back_through_every_node() {
    let cluster = Cluster::start(5);
    let mut data = data(1000);
    put_all(&cluster, 0, &data);

    // The real kvctl: overwrite a few of those keys and read them back, byte for byte.
    assert_prints(&cluster.kvctl(0, &["put", "key-0001", "hello"]), b"ok\n");
    data.insert("key-0001".into(), b"hello".to_vec());
    assert_prints(&cluster.kvctl(2, &["get", "key-0001"]), b"hello");
    // `-` reads the value from stdin as raw bytes: newlines, NUL and invalid UTF-8 included.
    let raw = b"two\nlines\0\xff and no final newline".to_vec();
    let out = cluster.kvctl_with_input(1, &["put", "key-0002", "-"], &raw);
    assert_prints(&out, b"ok\n");
    data.insert("key-0002".into(), raw.clone());
    assert_prints(&cluster.kvctl(3, &["get", "key-0002"]), &raw);
    // A value that looks like a flag is a value.
    assert_prints(&cluster.kvctl(4, &["put", "key-0003", "-5"]), b"ok\n");
    data.insert("key-0003".into(), b"-5".to_vec());
    assert_prints(&cluster.kvctl(0, &["get", "key-0003"]), b"-5");
    // A key written through the library, read through another node by the binary.
    assert_prints(&cluster.kvctl(3, &["get", "key-0999"]), b"value-999");
    let out = cluster.kvctl(4, &["--json", "get", "key-0001"]);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("kvctl --json get prints JSON");
    assert_eq!(json["found"], true, "{json}");
    assert_eq!(json["value"], "hello", "{json}");
    // Delete and put back: `deleted`, then a miss, then a miss for the second delete.
    assert_prints(&cluster.kvctl(2, &["delete", "key-0004"]), b"deleted\n");
    let out = cluster.kvctl(3, &["get", "key-0004"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = cluster.kvctl(4, &["delete", "key-0004"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "kvctl: key not found: key-0004\n");
    assert_prints(&cluster.kvctl(0, &["put", "key-0004", "back"]), b"ok\n");
    data.insert("key-0004".into(), b"back".to_vec());
    // A blind write (the empty context) does not replace the value it did not read: `get`
    // prints both siblings and the context that resolves them, and a put with it does.
    let blind = kvctl::Context::empty().to_token();
    let out = cluster.kvctl(1, &["put", "--context", &blind, "key-0005", "blind"]);
    assert_prints(&out, b"ok\n");
    let out = cluster.kvctl(2, &["get", "key-0005"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // In dot order, which depends on which nodes coordinated the writes.
    let mut siblings: Vec<&[u8]> = out.stdout.split_inclusive(|&b| b == b'\n').collect();
    siblings.sort();
    assert_eq!(
        siblings,
        [&b"blind\n"[..], b"value-5\n"],
        "{:?}",
        out.stdout
    );
    let hint = stderr(&out);
    let token = hint
        .strip_prefix("kvctl: key-0005 has 2 concurrent values (siblings); resolve with: ")
        .and_then(|rest| rest.strip_prefix("kvctl put --context "))
        .and_then(|rest| rest.strip_suffix(" key-0005 VALUE\n"))
        .unwrap_or_else(|| panic!("no resolve hint: {hint:?}"));
    let out = cluster.kvctl(3, &["put", "--context", token, "key-0005", "value-5"]);
    assert_prints(&out, b"ok\n");
    assert_prints(&cluster.kvctl(4, &["get", "key-0005"]), b"value-5");
    // A missing key: exit 1, nothing on stdout, one line on stderr.
    let out = cluster.kvctl(1, &["get", "no-such-key"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(stderr(&out), "kvctl: key not found: no-such-key\n");

    assert_all_readable(&cluster, &cluster.all(), &data);

    // `kvctl ring` shows the ring consistent and the keys spread over it, 1,000 in all.
    wait_until(CONVERGE, "kvctl ring to count 1000 keys", || {
        let out = cluster.kvctl(2, &["--json", "ring"]);
        if !out.status.success() {
            return Err(format!("kvctl ring failed: {}", stderr(&out)));
        }
        let ring: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
        let nodes = ring["nodes"].as_array().ok_or("no nodes array")?;
        let total: u64 = nodes.iter().filter_map(|n| n["owned"].as_u64()).sum();
        if ring["consistent"] != true || ring["closed"] != true || nodes.len() != 5 {
            return Err(format!("ring not converged: {ring}"));
        }
        if total != 1000 {
            return Err(format!("the nodes hold {total} keys: {ring}"));
        }
        Ok(())
    });
}

#[test]
fn graceful_leave_hands_keys_over() {
    let mut cluster = Cluster::start(5);
    let data = data(500);
    put_all(&cluster, 0, &data);
    wait_for_total_keys(&cluster, &cluster.all(), 500);

    // Stop the node with the most keys, so the hand-over has something to move.
    let (leaver, keys) = busiest_node(&cluster, &cluster.all());
    assert!(keys > 0, "node {leaver} holds no keys to hand over");
    let status = cluster.stop_node(leaver);
    assert!(
        status.success(),
        "node {leaver} exited with {status} after SIGTERM"
    );

    let rest: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leaver).collect();
    cluster.wait_for_ring(&rest);
    assert_all_readable(&cluster, &rest, &data);
    wait_for_total_keys(&cluster, &rest, 500);
}

/// An id halfway along the widest clockwise gap between `ids` (at least two): a node given it
/// owns at least an eighth of the circle in a ring of four, so it surely holds some of a few
/// hundred keys.
fn id_in_widest_gap(ids: &[Id]) -> Id {
    // The top 64 bits place an id on the circle finely enough.
    let top = |id: &Id| u64::from_be_bytes(*id.0.first_chunk::<8>().expect("ids have 20 bytes"));
    let mut points: Vec<u64> = ids.iter().map(top).collect();
    points.sort_unstable();
    let (from, gap) = points
        .iter()
        .zip(points.iter().cycle().skip(1))
        .map(|(&a, &b)| (a, b.wrapping_sub(a)))
        .max_by_key(|&(_, gap)| gap)
        .expect("at least two ids");
    let mut id = Id([0x5a; 20]);
    id.0[..8].copy_from_slice(&from.wrapping_add(gap / 2).to_be_bytes());
    id
}

#[test]
fn restart_from_data_dir_keeps_id_and_data() {
    let mut cluster = Cluster::start(4);
    // The fifth node gets an id that is not the hash of its address, so that finding the same
    // id after the restart shows it came from the data directory.
    let id = id_in_widest_gap(&ids(&cluster.wait_for_ring(&cluster.all())));
    let victim = cluster.start_node(Some(0), &["--node-id", &id.to_string()]);
    cluster.wait_for_ring(&cluster.all());
    assert_eq!(cluster.status(victim).expect("it answers").node.id, id);

    let data = data(300);
    put_all(&cluster, 0, &data);
    wait_for_total_keys(&cluster, &cluster.all(), 300);
    let before = cluster.status(victim).expect("the victim answers");
    let (keys, owned) = (before.keys, before.owned);
    assert!(owned > 0, "node {victim} owns no keys to keep");

    cluster.kill_node(victim);
    // The survivors repair the ring around the crashed node, and its keys are still served
    // from their replicas.
    let rest: Vec<usize> = cluster.all().into_iter().filter(|&i| i != victim).collect();
    cluster.wait_for_ring(&rest);
    assert_all_readable(&cluster, &rest, &data);

    // Everything the node stored before the kill is in its data directory. (At least: the last
    // copies of recent writes and repairs may still have been arriving when it was counted.)
    let on_disk = SledStorage::open(cluster.data_dir(victim))
        .and_then(|s| s.scan_range(Id::ZERO, Id::ZERO, usize::MAX))
        .map(|entries| entries.len() as u64)
        .expect("the killed node's data directory opens");
    assert!(
        on_disk >= keys,
        "the data directory holds {on_disk} keys; the node reported {keys} before the kill"
    );

    // Same port and data directory, but no --node-id this time.
    cluster.set_args(victim, &[]);
    cluster.restart_node(victim, Some(0));
    let status = cluster.status(victim).expect("the restarted node answers");
    assert_eq!(status.node.id, id, "the restarted node changed its id");
    assert_ne!(id, Id::hash(cluster.addr(victim).to_string().as_bytes()));
    assert!(
        status.keys >= on_disk,
        "the restarted node serves {} keys of the {on_disk} in its data directory",
        status.keys
    );

    cluster.wait_for_ring(&cluster.all());
    assert_all_readable(&cluster, &cluster.all(), &data);
    wait_for_total_keys(&cluster, &cluster.all(), 300);
    let status = cluster.status(victim).expect("the restarted node answers");
    assert_eq!(
        status.owned, owned,
        "the restarted node's share of the keys changed"
    );
}

#[test]
fn a_lone_node_is_a_consistent_ring() {
    let mut cluster = Cluster::new();
    let node = cluster.start_node(None, &[]);
    cluster.wait_for_ring(&[node]);
    let out = cluster.kvctl(node, &["ring"]);
    assert!(out.status.success(), "kvctl ring exited {:?}", out.status);
}

#[test]
fn a_lone_node_on_the_defaults_refuses_writes_and_says_why() {
    // N = 3, W = 2: one node holds one copy, and W is never shrunk to fit.
    let mut cluster = Cluster::new();
    let node = cluster.start_node(None, &["--request-timeout-ms", "1000"]);
    let out = cluster.kvctl(node, &["put", "solo", "one copy"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_one_error_line(&out);
    let err = stderr(&out);
    assert!(
        err.contains("needs 2 copies") && err.contains("only 1"),
        "{err}"
    );
    // The request asked for one copy: that the client may choose.
    assert_prints(
        &cluster.kvctl(node, &["--r", "1", "--w", "1", "put", "solo", "one copy"]),
        b"ok\n",
    );
}

#[test]
fn lone_node_restarted_alone_serves_its_data() {
    let mut cluster = Cluster::new();
    let node = cluster.start_node(None, &["--replicas", "1"]);
    assert_prints(
        &cluster.kvctl(node, &["put", "solo", "still here"]),
        b"ok\n",
    );
    let id = cluster.status(node).expect("the node answers").node.id;

    let status = cluster.stop_node(node);
    assert!(
        status.success(),
        "the node exited with {status} after SIGTERM"
    );
    cluster.restart_node(node, None);

    assert_eq!(cluster.status(node).expect("it answers").node.id, id);
    assert_prints(&cluster.kvctl(node, &["get", "solo"]), b"still here");
}

/// Sends `bytes` on a new connection to `addr` and returns everything the node sends back
/// until it closes the connection. Panics if it does not close it within the deadline.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("the node accepts connections");
    // The node may close before reading everything; what it sent back is what matters.
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the node kept the connection open after {bytes:?}; it sent {received:?}"
        );
        stream
            .set_read_timeout(Some(left))
            .expect("a read timeout can be set");
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return received,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("reading from the node failed: {e}"),
        }
    }
}

/// Checks the node's answer to an open client handshake is its hello, its handshake's answers
/// and then one error notice, sent before it closed the connection; returns the error.
fn notice_after_hello(received: &[u8]) -> Error {
    assert!(
        received.len() >= OPEN_ANSWER_LEN,
        "the node did not answer the handshake: {received:?}"
    );
    let (handshake, rest) = received.split_at(OPEN_ANSWER_LEN);
    assert_eq!(
        handshake[..7],
        wire::encode_hello(Role::Node),
        "the node's hello"
    );
    assert_eq!(handshake[7], 0, "an open node asks for no proof");
    assert_eq!(handshake[24], 0, "an open node accepts the client");
    match wire::parse_frame(rest, HARD_MAX_FRAME) {
        Ok(Some((Envelope::Response { id, body: Err(e) }, used))) => {
            assert_eq!(id, NOTICE_ID, "the notice's request id");
            assert_eq!(used, rest.len(), "bytes after the notice");
            e
        }
        other => panic!("expected an error notice, got {other:?} from {rest:?}"),
    }
}

/// Asserts node `i` still stores and returns values, through the real kvctl.
#[track_caller]
fn assert_serving(cluster: &Cluster, i: usize, after: &str) {
    let key = format!("after-{after}");
    let value = format!("served after {after}");
    assert_prints(&cluster.kvctl(i, &["put", &key, &value]), b"ok\n");
    assert_prints(&cluster.kvctl(i, &["get", &key]), value.as_bytes());
}

#[test]
fn bad_input_leaves_the_node_serving() {
    let mut cluster = Cluster::new();
    // Alone, a node keeps one copy only when told to (`--replicas 1`).
    let node = cluster.start_node(None, &["--max-value-bytes", "1024", "--replicas", "1"]);
    let addr = cluster.addr(node);
    assert_serving(&cluster, node, "start");
    let hello = open_connector_bytes(Role::Client);

    // (a) Not chordkv at all: the node closes without saying anything.
    let received = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        received.is_empty(),
        "the node answered HTTP with {received:?}"
    );
    assert_serving(&cluster, node, "HTTP");

    // (a') Another protocol version: the node answers with its own hello, so the peer can say
    // which versions differ, and closes.
    let received = exchange(addr, b"CHKV\x00\x09\x02");
    assert_eq!(
        received,
        wire::encode_hello(Role::Node),
        "answer to version 9"
    );
    assert_serving(&cluster, node, "version 9");

    // (b) A frame announcing 4 GiB: refused from its length prefix alone.
    let mut bytes = hello.clone();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let e = notice_after_hello(&exchange(addr, &bytes));
    assert!(
        matches!(&e, Error::TooLarge { what, .. } if what == "frame"),
        "{e:?}"
    );
    assert_serving(&cluster, node, "huge prefix");

    // (c) A well-sized frame of bytes that decode to nothing (a fixed pseudo-random sequence).
    let mut state: u32 = 0x9e37_79b9;
    let body: Vec<u8> = (0..256)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_be_bytes()[0]
        })
        .collect();
    let mut bytes = hello;
    bytes.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    bytes.extend_from_slice(&body);
    let e = notice_after_hello(&exchange(addr, &bytes));
    assert!(matches!(e, Error::InvalidData(_)), "{e:?}");
    assert_serving(&cluster, node, "garbage frame");

    // (d) A value over --max-value-bytes: refused in one line naming the limit; one at the
    // limit is stored.
    let out = cluster.kvctl_with_input(node, &["put", "big", "-"], &[b'x'; 1025]);
    assert!(!out.status.success(), "an oversized put succeeded");
    assert_one_error_line(&out);
    let message = stderr(&out);
    assert!(
        message.contains("limit") && message.contains("1024"),
        "the error does not name the limit: {message}"
    );
    let out = cluster.kvctl(node, &["get", "big"]);
    assert_eq!(out.status.code(), Some(1), "the oversized value was stored");
    let at_limit = vec![b'y'; 1024];
    let out = cluster.kvctl_with_input(node, &["put", "big", "-"], &at_limit);
    assert_prints(&out, b"ok\n");
    assert_prints(&cluster.kvctl(node, &["get", "big"]), &at_limit);
    assert_serving(&cluster, node, "oversized value");

    // (e) A subcommand kvctl does not know: a usage error.
    let out = cluster.kvctl(node, &["frobnicate", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Usage:"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_serving(&cluster, node, "unknown subcommand");

    // And the library client still works over one long-lived connection.
    let client: Client = cluster.client(node);
    let got = cluster.block_on(client.get(b"after-start"));
    assert_eq!(got, Ok(Some(b"served after start".to_vec())));
}

/// Asserts `out` failed with exit status 2 and exactly one line on stderr, starting "kvctl: ".
#[track_caller]
fn assert_one_error_line(out: &Output) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("kvctl: "), "{err:?}");
    assert!(
        err.ends_with('\n') && err.lines().count() == 1,
        "not one line: {err:?}"
    );
}

#[test]
fn kvctl_reports_a_down_node_in_one_line() {
    // A port nothing listens on.
    let addr = free_addr().to_string();
    for args in [
        vec!["get", "x"],
        vec!["put", "x", "y"],
        vec!["delete", "x"],
        vec!["lookup", "x"],
        vec!["ring"],
        vec!["--json", "ring"],
    ] {
        let mut all = vec!["--node", addr.as_str(), "--timeout", "5"];
        all.extend(args);
        let out = kvctl(&all);
        assert_one_error_line(&out);
        assert!(out.stdout.is_empty(), "{all:?} printed {:?}", out.stdout);
    }
}
