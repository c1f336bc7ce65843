//! The kvctl binary against a fake one-node ring served in-process over the real wire protocol:
//! output formats, raw bytes, exit codes and error lines. The real node is tested end to end in
//! the workspace's system tests; this checks the CLI's own contract.

use chordkv_node::id::Id;
use chordkv_node::message::{Envelope, LookupInfo, NodeRef, NodeStatus, Request, Response};
use chordkv_node::wire::{FrameReader, FrameWriter, Limits, Role, read_hello, write_hello};
use chordkv_node::{Error, Result};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Starts a fake node on a loopback port, on its own thread, and returns its address.
fn fake_node() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tx.send(addr).expect("send addr");
            let me = NodeRef {
                id: Id::hash(addr.to_string().as_bytes()),
                addr,
            };
            let store = Store::default();
            loop {
                let (stream, _) = listener.accept().await.expect("accept");
                tokio::spawn(serve(stream, me, store.clone()));
            }
        });
    });
    rx.recv().expect("fake node address")
}

async fn serve(mut stream: tokio::net::TcpStream, me: NodeRef, store: Store) {
    let timeout = Duration::from_secs(5);
    if read_hello(&mut stream, timeout).await.is_err() {
        return;
    }
    write_hello(&mut stream, Role::Node).await.expect("hello");
    let (r, w) = stream.into_split();
    let max = Limits::default().max_frame;
    let (mut r, mut w) = (FrameReader::new(r, max), FrameWriter::new(w, max));
    while let Ok(Some(Envelope::Request { id, body })) = r.read_frame().await {
        let body = answer(body, me, &store);
        w.write_frame(&Envelope::Response { id, body })
            .await
            .expect("write");
    }
}

fn answer(req: Request, me: NodeRef, store: &Store) -> Result<Response> {
    let mut store = store.lock().expect("store");
    match req {
        Request::Get { key } => Ok(Response::Value(store.get(&key).cloned())),
        Request::Put { key, value } => {
            store.insert(key, value);
            Ok(Response::Ack)
        }
        Request::Delete { key } => Ok(Response::Deleted(store.remove(&key).is_some())),
        Request::Lookup { key } => Ok(Response::Lookup(LookupInfo {
            key_id: Id::hash(&key),
            owner: me,
            hops: 0,
            timeouts: 0,
        })),
        Request::Status => Ok(Response::Status(NodeStatus {
            node: me,
            joined: true,
            pred: Some(me),
            succs: vec![me],
            fingers: vec![me],
            keys: store.len() as u64,
            successors_wanted: 3,
        })),
        _ => Err(Error::Unavailable("not in this fake".into())),
    }
}

/// Runs kvctl against `node` with `args`, feeding `stdin`.
fn kvctl(node: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--node")
        .arg(node.to_string())
        .args(args)
        .env_remove("KVCTL_NODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("kvctl output")
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf-8")
}

#[test]
fn put_get_delete_round_trip_with_raw_bytes_and_exit_codes() {
    let node = fake_node();
    let value = b"\x00binary\xff\n";

    let out = kvctl(node, &["put", "k1", "-"], value);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");

    // Not a terminal: exactly the stored bytes, no newline added.
    let out = kvctl(node, &["get", "k1"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, value);

    let out = kvctl(node, &["delete", "k1"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "deleted\n")
    );

    let out = kvctl(node, &["get", "k1"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"");
    assert_eq!(text(&out.stderr), "kvctl: key not found: k1\n");

    let out = kvctl(node, &["delete", "k1"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "kvctl: key not found: k1\n");
}

#[test]
fn json_output_is_one_object_per_command() {
    let node = fake_node();
    let out = kvctl(node, &["--json", "put", "k", "héllo"], b"");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], true);

    let out = kvctl(node, &["get", "k", "--json"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["found"], true);
    assert_eq!(v["value"], "héllo");
    assert_eq!(v["value_hex"], hex::encode("héllo"));

    let out = kvctl(node, &["--json", "lookup", "k"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["key_id"], Id::hash(b"k").to_string());
    assert_eq!(v["owner"]["addr"], node.to_string());
    assert_eq!(v["owner"]["id"].as_str().map(str::len), Some(40));

    let out = kvctl(node, &["--json", "ring"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["consistent"], true);
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(1));

    let out = kvctl(node, &["--json", "get", "absent"], b"");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["found"], false);
}

#[test]
fn ring_and_lookup_print_readable_text() {
    let node = fake_node();
    let out = kvctl(node, &["ring"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("NODE"), "{stdout}");
    assert!(stdout.contains(&node.to_string()), "{stdout}");
    assert!(stdout.ends_with("ring is consistent: 1 node\n"), "{stdout}");

    let out = kvctl(node, &["lookup", "k"], b"");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&Id::hash(b"k").to_string()), "{stdout}");
    assert!(stdout.contains("hops      0"), "{stdout}");
}

#[test]
fn errors_are_one_line_with_exit_code_2() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let out = kvctl(closed, &["get", "k"], b"");
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "kvctl: cannot reach node {closed}: connection refused"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let node = fake_node();
    let out = kvctl(node, &["get", ""], b"");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "kvctl: get failed: invalid input: empty key\n"
    );
}
