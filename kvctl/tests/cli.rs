//! The kvctl binary against a fake one-node ring served in-process over the real wire protocol:
//! output formats, raw bytes, exit codes and error lines. The real node is tested end to end in
//! the workspace's system tests; this checks the CLI's own contract.
//!
//! The fake keeps each key's versions as the real node does ([`Versioned`]), so blind writes
//! (an empty context) make siblings, and a write with a read's context replaces them. It
//! ignores session floors, except that session requests for the keys `stale` and `stale-write`
//! are refused as a node refuses a floor no copy meets ([`Error::SessionUnmet`]).
//!
//! Every kvctl here runs with `XDG_STATE_HOME` in a temporary directory of this test process,
//! so the default session file is never the user's; tests of sessions name their own file.

use chordkv_node::auth::Gate;
use chordkv_node::id::Id;
use chordkv_node::message::{
    Envelope, LookupInfo, NodeRef, NodeStatus, ReadReply, Request, Response,
};
use chordkv_node::session::{Guarantee, Session};
use chordkv_node::version::{Context, Dot, VersionVector, Versioned};
use chordkv_node::wire::{FrameReader, FrameWriter, Limits, handshake};
use chordkv_node::{Error, Result};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

type Store = Arc<Mutex<HashMap<Vec<u8>, Versioned>>>;

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
    if handshake::accept(&mut stream, &Gate::default(), timeout)
        .await
        .is_err()
    {
        return;
    }
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

/// What the fake refuses a session request for `key` with, if anything.
fn unmet(key: &[u8], in_session: bool) -> Option<Error> {
    let (op, guarantee) = match key {
        b"stale" => ("read", Guarantee::MonotonicReads),
        b"stale-write" => ("write", Guarantee::MonotonicWrites),
        _ => return None,
    };
    in_session.then(|| Error::SessionUnmet {
        op: op.into(),
        guarantee,
        detail: "the 1 copies reached hold older states than this session has seen".into(),
    })
}

fn answer(req: Request, me: NodeRef, store: &Store) -> Result<Response> {
    match &req {
        Request::Get { key, session, .. } => unmet(key, session.is_some()),
        Request::Put { key, session, .. } | Request::Delete { key, session, .. } => {
            unmet(key, session.is_some())
        }
        _ => None,
    }
    .map_or(Ok(()), Err)?;
    let mut store = store.lock().expect("store");
    let mut write = |key: Vec<u8>, value: Option<Vec<u8>>, context: VersionVector| {
        let state = store.entry(key).or_default();
        let existed = !state.is_deleted();
        let dot = state.write(me.id, &context, value);
        Ok(Response::Written {
            dot,
            existed,
            stable: false,
        })
    };
    match req {
        Request::Put {
            key,
            value,
            context,
            ..
        } => write(key, Some(value), context),
        Request::Delete { key, context, .. } => write(key, None, context),
        Request::Get { key, .. } => {
            let state = store.get(&key).cloned().unwrap_or_default();
            Ok(Response::Read(ReadReply {
                values: state.values().into_iter().map(<[u8]>::to_vec).collect(),
                context: state.context().clone(),
                deps: Default::default(),
                stable: false,
            }))
        }
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
            keys: store.values().filter(|v| !v.is_deleted()).count() as u64,
            successors_wanted: 3,
            owned: 0,
            replicas: 1,
            replicas_wanted: 1,
        })),
        _ => Err(Error::Unavailable("not in this fake".into())),
    }
}

/// The `XDG_STATE_HOME` every kvctl of this test process runs with, unless a test sets its own.
fn state_home() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

/// Runs kvctl against `node` with `args`, feeding `stdin`.
fn kvctl(node: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    kvctl_env(
        node,
        args,
        stdin,
        &[("XDG_STATE_HOME", Some(state_home().as_os_str()))],
    )
}

/// [`kvctl`] with environment variables set (`Some`) or removed (`None`).
fn kvctl_env(
    node: SocketAddr,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, Option<&OsStr>)],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.arg("--node")
        .arg(node.to_string())
        .args(args)
        .env_remove("KVCTL_NODE")
        .env_remove("KVCTL_SESSION");
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let mut child = cmd
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

/// The context TOKEN in a `get` resolve hint on stderr.
fn hint_token(stderr: &str) -> &str {
    stderr
        .split_once("--context ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(token, _)| token)
        .unwrap_or_else(|| panic!("no --context TOKEN in {stderr:?}"))
}

#[test]
fn blind_writes_make_siblings_that_get_shows_and_put_with_their_context_resolves() {
    let node = fake_node();
    let blind = Context::empty().to_token();
    for value in ["a", "b"] {
        let out = kvctl(node, &["put", "--context", &blind, "k", value], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "ok\n");
    }

    // Both values, a newline after each, and on stderr how to resolve them; still a success.
    let out = kvctl(node, &["get", "k"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\nb\n");
    let stderr = text(&out.stderr);
    let token = hint_token(stderr);
    assert_eq!(
        stderr,
        format!(
            "kvctl: k has 2 concurrent values (siblings); resolve with: \
             kvctl put --context {token} k VALUE\n"
        )
    );

    let out = kvctl(node, &["--json", "get", "k"], b"");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["found"], true);
    assert_eq!(v["siblings"], 2);
    assert_eq!(v["context"], token);
    assert_eq!(v["values"][0]["value"], "a");
    assert_eq!(v["values"][1]["value_hex"], hex::encode("b"));
    assert!(
        v.get("value").is_none(),
        "one value shown for siblings: {v}"
    );

    // Writing back with that context replaces both.
    let out = kvctl(node, &["--json", "put", "--context", token, "k", "c"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["existed"], true);
    let me = Id::hash(node.to_string().as_bytes());
    assert_eq!(v["dot"], format!("{}:3", me.short()));
    let out = kvctl(node, &["get", "k"], b"");
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "c"));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn a_stale_context_leaves_the_newer_value_as_a_sibling() {
    let node = fake_node();
    assert_eq!(
        kvctl(node, &["put", "k", "old"], b"").status.code(),
        Some(0)
    );
    let out = kvctl(node, &["--json", "get", "k"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let seen = v["context"].as_str().expect("context token").to_string();

    // Someone else overwrites after our read; our write with the old context keeps theirs.
    assert_eq!(
        kvctl(node, &["put", "k", "theirs"], b"").status.code(),
        Some(0)
    );
    let out = kvctl(node, &["put", "--context", &seen, "k", "ours"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = kvctl(node, &["get", "k"], b"");
    assert_eq!(text(&out.stdout), "theirs\nours\n");

    // A plain put reads first, so it replaces both; so does a plain delete.
    assert_eq!(
        kvctl(node, &["put", "k", "merged"], b"").status.code(),
        Some(0)
    );
    assert_eq!(text(&kvctl(node, &["get", "k"], b"").stdout), "merged");
    assert_eq!(
        kvctl(node, &["put", "k", "other"], b"").status.code(),
        Some(0)
    );
    let out = kvctl(node, &["delete", "k"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "deleted\n")
    );
    assert_eq!(kvctl(node, &["get", "k"], b"").status.code(), Some(1));
}

#[test]
fn delete_with_a_context_removes_only_what_it_covers() {
    let node = fake_node();
    let blind = Context::empty().to_token();
    for value in ["a", "b"] {
        let out = kvctl(node, &["put", "--context", &blind, "k", value], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    // A blind delete covers nothing: both values stay, beside a tombstone.
    let out = kvctl(node, &["delete", "--context", &blind, "k"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "deleted\n")
    );
    let out = kvctl(node, &["get", "k"], b"");
    assert_eq!(text(&out.stdout), "a\nb\n");

    let token = hint_token(text(&out.stderr)).to_string();
    let out = kvctl(node, &["--json", "delete", "k", "--context", &token], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["deleted"], true);
    let out = kvctl(node, &["get", "k"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "kvctl: key not found: k\n");

    // Deleting it again with the same context: there was nothing live to delete.
    let out = kvctl(node, &["delete", "k", "--context", &token], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "kvctl: key not found: k\n");
}

#[test]
fn a_bad_context_token_is_a_usage_error_in_one_line() {
    // Refused before connecting: this port has no node.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    for args in [
        &["put", "--context", "zz", "k", "v"][..],
        &["put", "--context", "abc", "k", "v"][..],
        &["delete", "--context", "", "k"][..],
    ] {
        let out = kvctl(closed, args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("kvctl: bad context token: "),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("`kvctl get` printed"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn the_library_get_refuses_siblings_and_put_and_delete_replace_them() {
    let node = fake_node();
    let client = kvctl::Client::connect(&node.to_string(), Duration::from_secs(5))
        .await
        .expect("connect");
    let blind = VersionVector::new();
    let first = client.write(b"k", b"a", &blind).await.expect("write");
    assert!(!first.existed);
    let second = client.write(b"k", b"b", &blind).await.expect("write");
    assert!(second.existed);
    assert_ne!(first.dot, second.dot);

    let read = client.read(b"k").await.expect("read");
    assert_eq!(read.values, vec![b"a".to_vec(), b"b".to_vec()]);
    match client.get(b"k").await {
        Err(Error::Conflict(msg)) => assert!(msg.contains("2 concurrent values"), "{msg}"),
        other => panic!("get of siblings answered {other:?}"),
    }

    let dot = client.put(b"k", b"c").await.expect("put");
    assert!(!read.context.covers(&dot), "a put makes a new event");
    assert_eq!(client.get(b"k").await, Ok(Some(b"c".to_vec())));

    assert_eq!(client.delete(b"k").await, Ok(true));
    assert_eq!(client.get(b"k").await, Ok(None));
    assert_eq!(client.delete(b"k").await, Ok(false));
    assert_eq!(client.get(b"absent").await, Ok(None));
}

// ---- sessions ----

/// `kvctl --session FILE session show --json`, parsed.
fn show(node: SocketAddr, file: &Path) -> serde_json::Value {
    let out = kvctl(
        node,
        &["--session", path(file), "--json", "session", "show"],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// The keys `session show --json` lists, as text.
fn shown_keys(v: &serde_json::Value) -> Vec<String> {
    v["floors"]
        .as_array()
        .map(|floors| {
            floors
                .iter()
                .map(|f| f["key"].as_str().expect("a text key").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_first_put_creates_the_session_file_and_later_commands_run_in_it() {
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nested").join("session");
    let f = path(&file);
    assert!(!file.exists());

    let out = kvctl(node, &["--session", f, "--json", "put", "k", "v"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["session"], true);
    assert!(file.is_file(), "no session file after a put");

    let v = show(node, &file);
    assert_eq!(v["exists"], true);
    assert_eq!(
        (v["keys"].clone(), v["unstable"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(v["floors"][0]["key"], "k");
    assert_eq!(v["floors"][0]["key_hex"], hex::encode("k"));
    assert_eq!(v["floors"][0]["wrote"], 1);
    assert_eq!(v["floors"][0]["stable"], false);
    let bytes = std::fs::metadata(&file).expect("metadata").len();
    assert_eq!(v["bytes"], bytes);

    // The environment variable names the file as well.
    let out = kvctl_env(
        node,
        &["--json", "get", "other"],
        b"",
        &[("KVCTL_SESSION", Some(file.as_os_str()))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["session"], true);
    assert_eq!(shown_keys(&show(node, &file)), ["k", "other"]);

    let out = kvctl(node, &["--session", f, "session", "show"], b"");
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("file      {f}\nsession   ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("keys      2 (2 not yet known on every copy)"),
        "{stdout}"
    );

    // lookup and ring need no session: they leave the file alone.
    let before = std::fs::read(&file).expect("read");
    for args in [&["lookup", "k"][..], &["ring"][..]] {
        let mut all = vec!["--session", f];
        all.extend_from_slice(args);
        assert_eq!(kvctl(node, &all, b"").status.code(), Some(0), "{args:?}");
    }
    assert_eq!(std::fs::read(&file).expect("read"), before);
}

#[test]
fn the_default_file_is_under_xdg_state_home_else_home() {
    let node = fake_node();
    let xdg = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let env = [
        ("XDG_STATE_HOME", Some(xdg.path().as_os_str())),
        ("HOME", Some(home.path().as_os_str())),
    ];
    let out = kvctl_env(node, &["put", "k", "v"], b"", &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let at_xdg = xdg.path().join("chordkv").join("session");
    assert!(at_xdg.is_file());
    let out = kvctl_env(node, &["session", "path"], b"", &env);
    assert_eq!(text(&out.stdout), format!("{}\n", at_xdg.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::fs::metadata(xdg.path().join("chordkv")).expect("metadata");
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }

    let env = [
        ("XDG_STATE_HOME", None),
        ("HOME", Some(home.path().as_os_str())),
    ];
    let out = kvctl_env(node, &["put", "k", "v"], b"", &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let at_home: PathBuf = [".local", "state", "chordkv", "session"].iter().collect();
    assert!(home.path().join(&at_home).is_file());

    // With neither, get, put and delete run without a session and say so, once.
    let env = [("XDG_STATE_HOME", None), ("HOME", None)];
    let out = kvctl_env(node, &["--json", "put", "k", "v"], b"", &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["session"], false);
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("kvctl: running without a session"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let out = kvctl_env(node, &["session", "path"], b"", &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--session FILE"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_session_writes_no_file() {
    let node = fake_node();
    let xdg = tempfile::tempdir().expect("tempdir");
    let named = xdg.path().join("named");
    let env = [("XDG_STATE_HOME", Some(xdg.path().as_os_str()))];
    for args in [
        &["--no-session", "--json", "put", "k", "v"][..],
        &["--no-session", "--json", "get", "k"][..],
        // It wins over a file named on the command line or in the environment.
        &[
            "--no-session",
            "--session",
            path(&named),
            "--json",
            "put",
            "k",
            "w",
        ][..],
        &["--json", "delete", "k", "--no-session"][..],
    ] {
        let out = kvctl_env(node, args, b"", &env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["session"], false, "{args:?}");
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
    let env = [
        ("XDG_STATE_HOME", Some(xdg.path().as_os_str())),
        ("KVCTL_SESSION", Some(named.as_os_str())),
    ];
    let out = kvctl_env(node, &["--no-session", "put", "k", "v"], b"", &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(xdg.path()).expect("read_dir").collect();
    assert!(left.is_empty(), "--no-session left {left:?}");

    let out = kvctl_env(node, &["--no-session", "session", "show"], b"", &env);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_corrupt_or_foreign_session_file_is_refused_with_exit_2_and_kept() {
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("session");
    let mut newer = b"CKVS\x09".to_vec();
    newer.extend_from_slice(&Session::new().to_bytes()[5..]);
    for (contents, why) in [
        (&b"not a session"[..], "bad magic"),
        (&b""[..], "bad magic"),
        (&newer[..], "format version 9"),
        (&b"CKVS\x01\xff\xff"[..], "session file"),
    ] {
        std::fs::write(&file, contents).expect("write");
        for args in [
            &["put", "k", "v"][..],
            &["get", "k"][..],
            &["session", "show"][..],
        ] {
            let mut all = vec!["--session", path(&file)];
            all.extend_from_slice(args);
            let out = kvctl(node, &all, b"");
            assert_eq!(out.status.code(), Some(2), "{args:?} {why}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.starts_with(&format!(
                    "kvctl: session file {} is unreadable: ",
                    path(&file)
                )),
                "{stderr}"
            );
            assert!(stderr.contains(why), "{why}: {stderr}");
            assert!(stderr.contains("`kvctl session reset`"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert_eq!(std::fs::read(&file).expect("read"), contents, "overwritten");
        }
    }
    // Nothing was sent: the put never reached the node.
    assert_eq!(
        kvctl(node, &["--no-session", "get", "k"], b"")
            .status
            .code(),
        Some(1)
    );
    // reset removes it, and the next put starts afresh.
    let f = path(&file);
    assert_eq!(
        kvctl(node, &["--session", f, "session", "reset"], b"")
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        kvctl(node, &["--session", f, "put", "k", "v"], b"")
            .status
            .code(),
        Some(0)
    );
    assert_eq!(shown_keys(&show(node, &file)), ["k"]);
}

#[test]
fn two_kvctl_processes_sharing_a_session_file_lose_nothing() {
    // Eight processes at once, each writing its own key in the same session: every save joins
    // its copy into the file under the lock, so all eight keys end up in it. Several rounds,
    // since a lost update would show only in some interleavings.
    let node = fake_node();
    for round in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("session");
        let children: Vec<_> = (0..8)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_kvctl"))
                    .args(["--node", &node.to_string(), "--session", path(&file)])
                    .args(["put", &format!("k{i}"), &format!("v{i}")])
                    .env_remove("KVCTL_NODE")
                    .env_remove("KVCTL_SESSION")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn kvctl")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("kvctl output");
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                text(&out.stderr)
            );
        }
        let v = show(node, &file);
        let want: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
        assert_eq!(shown_keys(&v), want, "round {round}: {v}");
        assert_eq!(v["keys"], 8, "round {round}");
        assert!(!dir.path().join("session.tmp").exists(), "round {round}");
    }
}

#[test]
fn session_path_and_reset() {
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s");
    let f = path(&file);
    let out = kvctl(node, &["--session", f, "session", "path"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), format!("{f}\n").as_str())
    );
    let out = kvctl(node, &["--session", f, "--json", "session", "path"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["path"], f);

    let out = kvctl(node, &["--session", f, "session", "show"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("no session at {f}: the next get, put or delete starts one\n")
    );
    assert_eq!(show(node, &file)["exists"], false);

    assert_eq!(
        kvctl(node, &["--session", f, "put", "k", "v"], b"")
            .status
            .code(),
        Some(0)
    );
    assert!(file.exists());
    let out = kvctl(node, &["--session", f, "session", "reset"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), format!("removed {f}\n").as_str())
    );
    assert!(!file.exists());
    let out = kvctl(node, &["--session", f, "--json", "session", "reset"], b"");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["removed"], false);
    let out = kvctl(node, &["--session", f, "session", "reset"], b"");
    assert_eq!(text(&out.stdout), format!("no session at {f}\n"));
}

#[test]
fn session_forget_drops_one_key() {
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s");
    let f = path(&file);
    for key in ["a", "b"] {
        let out = kvctl(node, &["--session", f, "put", key, "v"], b"");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    assert_eq!(shown_keys(&show(node, &file)), ["a", "b"]);
    let out = kvctl(node, &["--session", f, "session", "forget", "a"], b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "forgot a\n")
    );
    assert_eq!(shown_keys(&show(node, &file)), ["b"]);
    let out = kvctl(node, &["--session", f, "session", "forget", "a"], b"");
    assert_eq!(text(&out.stdout), "the session holds nothing of a\n");
}

#[test]
fn an_unmet_session_exits_4_with_the_guarantee_and_what_to_do() {
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("session");
    let f = path(&f);
    let detail = "the 1 copies reached hold older states than this session has seen";

    let out = kvctl(node, &["--session", f, "get", "stale"], b"");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "kvctl: cannot read stale without going back in time (monotonic reads): {detail}; \
             retry, or use --no-session\n"
        )
    );
    // A put reads first: here the write is what the node refuses.
    let out = kvctl(node, &["--session", f, "put", "stale-write", "v"], b"");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "kvctl: cannot write stale-write without going back in time (monotonic writes): \
             {detail}; retry, or use --no-session\n"
        )
    );
    // Without a session the fake answers as eventual consistency does.
    assert_eq!(
        kvctl(node, &["--no-session", "get", "stale"], b"")
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn a_full_session_exits_2_and_says_how_to_start_a_new_one() {
    // A session holding more unstable keys than a write may carry as dependencies; the fake
    // never reports a copy stable, so compaction cannot help and the write is refused.
    let node = fake_node();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("session");
    let mut session = Session::new();
    let actor = Id::hash(b"elsewhere");
    for i in 0..=chordkv_node::session::MAX_DEPS as u64 {
        session.observe_write(format!("k{i}").as_bytes(), Dot::new(actor, i + 1), false);
    }
    std::fs::write(&file, session.to_bytes()).expect("write");
    let out = kvctl(node, &["--session", path(&file), "put", "new", "v"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("kvctl: put failed: session full: "),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("; start a new session with --session FILE or `kvctl session reset`\n"),
        "{stderr}"
    );
    assert_eq!(
        kvctl(node, &["--no-session", "get", "new"], b"")
            .status
            .code(),
        Some(1)
    );
}
