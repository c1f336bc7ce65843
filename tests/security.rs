//! Who gets in, and what they may do, on real nodes: the cluster secret, client tokens and
//! their access, role checks on every request, replayed handshakes, TLS, refusing to start
//! exposed without credentials, and idle connections that must not lock anyone out.

#[allow(dead_code)]
mod common;

use chordkv_node::auth::{Secret, Token};
use chordkv_node::message::{NodeRef, Request, Response, WriteId};
use chordkv_node::tls::ClientTls;
use chordkv_node::wire::handshake::{NONCE_LEN, OPEN_ANSWER_LEN, open_connector_bytes};
use chordkv_node::wire::{self, Channel, Credential, Dialer, Limits, Role};
use common::{CLIENT_TIMEOUT, CONVERGE, Cluster, assert_prints, binary, free_addr, stderr};
use kvctl::{Client, Error, Id, VersionVector};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER_SECRET: &str = "5f1c0e9a7b3d4c2e8f6a1b0c9d8e7f6a";
const WRITER: &str = "app:0123456789abcdef0123456789abcdef";
const READER: &str = "dashboard:fedcba9876543210fedcba9876543210";

/// The credentials a secured test ring uses, written into its directory.
struct Credentials {
    secret: PathBuf,
    tokens: PathBuf,
    writer: PathBuf,
    reader: PathBuf,
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a credentials file");
    path
}

fn credentials(dir: &Path) -> Credentials {
    Credentials {
        secret: write_file(dir, "cluster.secret", &format!("{CLUSTER_SECRET}\n")),
        tokens: write_file(
            dir,
            "tokens",
            &format!("# test tokens\nread-write {WRITER}\nread-only {READER}\n"),
        ),
        writer: write_file(dir, "writer.token", WRITER),
        reader: write_file(dir, "reader.token", READER),
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn token(text: &str) -> Token {
    text.parse().expect("a token")
}

fn cluster_secret() -> Secret {
    Secret::new(CLUSTER_SECRET.as_bytes()).expect("secret")
}

/// A cluster whose harness clients and kvctl runs prove the read-write token.
fn secured_cluster() -> (Cluster, Credentials) {
    let mut cluster = Cluster::new();
    let creds = credentials(cluster.dir());
    let mut dialer = Client::open_dialer();
    dialer.credential = Credential::Token(token(WRITER));
    let writer = path(&creds.writer).to_string();
    cluster.set_client_credentials(dialer, &["--token-file", &writer]);
    (cluster, creds)
}

fn secured_args(creds: &Credentials) -> Vec<String> {
    vec![
        "--cluster-secret-file".into(),
        path(&creds.secret).into(),
        "--tokens-file".into(),
        path(&creds.tokens).into(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_node_without_the_cluster_secret_cannot_join() {
    let (mut cluster, creds) = secured_cluster();
    let args = secured_args(&creds);
    cluster.start_node(None, &strs(&args));
    cluster.start_node(Some(0), &strs(&args));
    cluster.wait_for_ring(&[0, 1]);

    // Same tokens (so the harness can ask it), another cluster secret.
    let wrong = write_file(
        cluster.dir(),
        "wrong.secret",
        "not the cluster secret, 32 bytes",
    );
    let intruder = cluster.start_node(
        Some(0),
        &[
            "--cluster-secret-file",
            path(&wrong),
            "--tokens-file",
            path(&creds.tokens),
        ],
    );
    // And one with no secret at all. It serves open clients (and refuses to be shown a token
    // it could not check), so the harness asks it without one.
    let writer = path(&creds.writer).to_string();
    let mut with_token = Client::open_dialer();
    with_token.credential = Credential::Token(token(WRITER));
    cluster.set_client_credentials(Client::open_dialer(), &[]);
    let open = cluster.start_node(Some(0), &[]);
    cluster.set_client_credentials(with_token, &["--token-file", &writer]);

    // Give them time to try: a join takes a few stabilization rounds of 100 ms.
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster
        .status(intruder)
        .expect("the intruder answers its own clients");
    assert!(
        !status.joined,
        "a node with the wrong secret joined: {status:?}"
    );
    let plain = cluster.block_on(async {
        let addr = cluster.addr(open).to_string();
        Client::connect(&addr, CLIENT_TIMEOUT).await?.status().await
    });
    let plain = plain.expect("the open node answers open clients");
    assert!(
        cluster
            .log_tail(open)
            .contains("requires the cluster secret"),
        "the open node's log does not say why: {}",
        cluster.log_tail(open)
    );
    assert!(!plain.joined, "a node without the secret joined: {plain:?}");
    cluster.wait_for_ring(&[0, 1]);
    assert!(
        cluster.log_tail(intruder).contains("wrong cluster secret"),
        "the intruder's log does not say why: {}",
        cluster.log_tail(intruder)
    );

    // A node of the cluster (right secret, and a cluster's tokens) joins.
    cluster.start_node(Some(0), &strs(&args));
    cluster.wait_for_ring(&[0, 1, 4]);
}

/// One request of every node-to-node kind, each aimed at `key` or at the ring.
fn node_requests(key: &[u8], someone: NodeRef) -> Vec<Request> {
    let state = vec![0u8; 8];
    vec![
        Request::Transfer {
            from: someone,
            items: vec![(key.to_vec(), state.clone())],
            deletes: vec![key.to_vec()],
            leaving: true,
        },
        Request::Reap {
            items: vec![(key.to_vec(), 0)],
            commit: true,
        },
        Request::Replicate {
            items: vec![(key.to_vec(), state.clone())],
        },
        Request::Handoff {
            from: someone,
            items: vec![(key.to_vec(), state)],
        },
        Request::Notify { node: someone },
        Request::Leaving {
            node: someone,
            pred: Some(someone),
            succs: vec![someone],
        },
        Request::FailureNotice { dead: someone },
        Request::Adopted {
            pred: Some(someone),
        },
        Request::StoreWrite {
            key: key.to_vec(),
            value: None,
            context: VersionVector::default(),
            write_id: WriteId {
                coordinator: someone.id,
                incarnation: 1,
                seq: 1,
            },
            w: None,
            session: None,
            mode: Default::default(),
        },
        Request::ReplicaRead { key: key.to_vec() },
        Request::SyncFetch {
            keys: vec![key.to_vec()],
            max_bytes: 1 << 20,
        },
        Request::GetNeighbors,
        Request::FindSuccessor {
            target: Id::hash(key),
            avoid: vec![],
        },
    ]
}

#[test]
fn client_connections_cannot_send_node_requests() {
    let (mut cluster, creds) = secured_cluster();
    let args = secured_args(&creds);
    for i in 0..3 {
        cluster.start_node((i > 0).then_some(0), &strs(&args));
    }
    cluster.wait_for_ring(&[0, 1, 2]);
    assert_prints(&cluster.kvctl(0, &["put", "precious", "kept"]), b"ok\n");
    let someone = NodeRef {
        id: Id::hash(b"mallory"),
        addr: free_addr(),
    };
    for i in cluster.all() {
        let client = cluster.client(i);
        for request in node_requests(b"precious", someone) {
            let kind = request.kind();
            match cluster.block_on(client.call(request)) {
                Err(Error::Forbidden(m)) => assert!(m.contains(kind), "{m}"),
                other => panic!("{kind} from a client to node {i} answered {other:?}"),
            }
        }
        // The connection serves on.
        assert_eq!(
            cluster.block_on(client.get(b"precious")),
            Ok(Some(b"kept".to_vec()))
        );
    }
    // Every copy is untouched: each node still holds it, and the ring is as it was.
    for i in cluster.all() {
        assert_prints(&cluster.kvctl(i, &["get", "precious"]), b"kept");
    }
    cluster.wait_for_ring(&[0, 1, 2]);

    // The role check holds without credentials too: an open node refuses node requests from a
    // connection that says it is a client.
    cluster.set_client_credentials(Client::open_dialer(), &[]);
    let open = cluster.start_node(None, &["--replicas", "1"]);
    let client = cluster.block_on(async {
        let addr = cluster.addr(open).to_string();
        Client::connect(&addr, CLIENT_TIMEOUT).await
    });
    let client = client.expect("an open client");
    let transfer = node_requests(b"k", someone).swap_remove(0);
    assert!(matches!(
        cluster.block_on(client.call(transfer)),
        Err(Error::Forbidden(_))
    ));
}

#[test]
fn tokens_decide_who_reads_and_writes() {
    let (mut cluster, creds) = secured_cluster();
    let args = secured_args(&creds);
    let node = cluster.start_node(None, &strs(&args));
    cluster.start_node(Some(node), &strs(&args));
    cluster.wait_for_ring(&[0, 1]);
    assert_prints(&cluster.kvctl(0, &["put", "k", "v1"]), b"ok\n");

    let addr = cluster.addr(0).to_string();
    let run = |extra: &[&str]| {
        let mut all = vec!["--node", addr.as_str()];
        all.extend_from_slice(extra);
        common::kvctl(&all)
    };
    let reader = path(&creds.reader);
    // A read-only token reads, and cannot write or delete.
    assert_prints(&run(&["--token-file", reader, "get", "k"]), b"v1");
    for args in [
        vec!["--token-file", reader, "put", "k", "v2"],
        vec!["--token-file", reader, "delete", "k"],
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    }
    assert_prints(&run(&["--token-file", reader, "get", "k"]), b"v1");

    // No token, a wrong secret, an unknown name: refused in the handshake, saying how to fix it.
    let wrong = write_file(
        cluster.dir(),
        "wrong.token",
        "app:0000000000000000000000000000000000",
    );
    let unknown = write_file(
        cluster.dir(),
        "unknown.token",
        "nobody:0123456789abcdef0123456789abcdef",
    );
    for (args, says) in [
        (vec!["get", "k"], "requires a client token"),
        (
            vec!["--token-file", path(&wrong), "get", "k"],
            "wrong secret",
        ),
        (
            vec!["--token-file", path(&unknown), "get", "k"],
            "wrong secret",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
    }
    // The token may come from the environment too.
    let out = Command::new(binary("kvctl"))
        .args(["--no-session", "--node", &addr, "put", "k", "v3"])
        .env("KVCTL_TOKEN", WRITER)
        .env_remove("KVCTL_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("kvctl runs");
    assert_prints(&out, b"ok\n");
    assert_prints(&run(&["--token-file", reader, "get", "k"]), b"v3");
}

/// A TCP proxy that records what the client sends, to replay it.
async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("accept");
        let node = tokio::net::TcpStream::connect(to).await.expect("connect");
        let (mut cr, mut cw) = client.into_split();
        let (mut nr, mut nw) = node.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut nr, &mut cw).await;
        });
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            record.lock().expect("record").extend_from_slice(&buf[..n]);
            if nw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (addr, seen)
}

#[test]
fn a_replayed_handshake_is_refused() {
    let (mut cluster, creds) = secured_cluster();
    let mut args = secured_args(&creds);
    args.extend(["--replicas".to_string(), "1".to_string()]);
    let node = cluster.start_node(None, &strs(&args));
    let addr = cluster.addr(node);
    let proof_len = chordkv_node::auth::PROOF_LEN;
    // A node's handshake, recorded on its way to the node: it succeeds.
    let recorded = cluster.block_on(async {
        let (proxy, seen) = recording_proxy(addr).await;
        let dialer = Dialer {
            role: Role::Node,
            credential: Credential::Cluster(cluster_secret()),
            tls: None,
            limits: Limits::client(),
        };
        let channel = Channel::dial(proxy, &dialer, CLIENT_TIMEOUT)
            .await
            .expect("the real handshake succeeds");
        let pong = channel.call(Request::Ping, CLIENT_TIMEOUT).await;
        assert!(matches!(pong, Ok(Response::Pong { .. })), "{pong:?}");
        let seen = seen.lock().expect("record").clone();
        seen[..7 + NONCE_LEN + 1 + proof_len].to_vec()
    });

    // The same bytes on a new connection: the node's fresh nonce makes the proof wrong.
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .expect("timeout");
    stream.write_all(&recorded).expect("replay");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let refusal = &answer[7 + 1 + NONCE_LEN..];
    assert_eq!(refusal[0], 1, "the replay was accepted: {answer:?}");
    let reason = String::from_utf8_lossy(&refusal[3..]);
    assert!(reason.contains("wrong cluster secret"), "{reason}");

    // And the node serves on.
    assert_prints(&cluster.kvctl(node, &["put", "k", "v"]), b"ok\n");
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("node key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("node params");
    let cert = params.signed_by(&key, &issuer).expect("node certificate");
    (
        write_file(dir, &format!("{name}-ca.pem"), &ca_cert.pem()),
        write_file(dir, &format!("{name}-cert.pem"), &cert.pem()),
        write_file(dir, &format!("{name}-key.pem"), &key.serialize_pem()),
    )
}

#[test]
fn a_tls_ring_forms_and_serves_kvctl_over_tls() {
    let (mut cluster, creds) = secured_cluster();
    let (ca, cert, key) = certificates(cluster.dir(), "ring");
    let mut dialer = Client::open_dialer();
    dialer.credential = Credential::Token(token(WRITER));
    dialer.tls = Some(ClientTls::from_ca_file(&ca).expect("CA"));
    cluster.set_client_credentials(
        dialer,
        &["--token-file", path(&creds.writer), "--tls-ca", path(&ca)],
    );
    let mut args = secured_args(&creds);
    args.extend(
        [
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--tls-ca",
            path(&ca),
        ]
        .map(String::from),
    );
    for i in 0..3 {
        cluster.start_node((i > 0).then_some(0), &strs(&args));
    }
    cluster.wait_for_ring(&[0, 1, 2]);
    assert_prints(
        &cluster.kvctl(0, &["put", "secret-key", "over tls"]),
        b"ok\n",
    );
    for i in cluster.all() {
        assert_prints(&cluster.kvctl(i, &["get", "secret-key"]), b"over tls");
    }

    let addr = cluster.addr(1).to_string();
    let writer = path(&creds.writer);
    // Without TLS the node does not understand the client, and the client says it failed.
    let out = common::kvctl(&["--node", &addr, "--token-file", writer, "get", "secret-key"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // With a CA that did not sign the node's certificate: refused before anything is sent.
    let (other_ca, _, _) = certificates(cluster.dir(), "other");
    let out = common::kvctl(&[
        "--node",
        &addr,
        "--token-file",
        writer,
        "--tls-ca",
        path(&other_ca),
        "get",
        "secret-key",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    // A node holding the secret but not speaking TLS cannot join either.
    let mut with_token = Client::open_dialer();
    with_token.credential = Credential::Token(token(WRITER));
    cluster.set_client_credentials(with_token, &[]);
    let plain = cluster.start_node(Some(0), &strs(&secured_args(&creds)));
    std::thread::sleep(Duration::from_secs(2));
    let plain_status = cluster.block_on(async {
        let mut dialer = Client::open_dialer();
        dialer.credential = Credential::Token(token(WRITER));
        let addr = cluster.addr(plain).to_string();
        Client::connect_with(&addr, dialer, CLIENT_TIMEOUT)
            .await?
            .status()
            .await
    });
    assert!(!plain_status.expect("status").joined);
    let mut tls = Client::open_dialer();
    tls.credential = Credential::Token(token(WRITER));
    tls.tls = Some(ClientTls::from_ca_file(&ca).expect("CA"));
    cluster.set_client_credentials(tls, &[]);
    cluster.wait_for_ring(&[0, 1, 2]);
}

#[test]
fn an_exposed_node_without_credentials_refuses_to_start() {
    let port = free_addr().port();
    let dir = tempfile::tempdir().expect("dir");
    let run = |extra: &[&str]| {
        let listen = format!("0.0.0.0:{port}");
        let advertise = format!("127.0.0.1:{port}");
        let data = dir.path().join("data");
        let mut cmd = Command::new(binary("chordkv-node"));
        cmd.args(["--listen", &listen, "--advertise", &advertise])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("CHORDKV_CLUSTER_SECRET")
            .env_remove("CHORDKV_CLUSTER_SECRET_FILE")
            .env_remove("CHORDKV_TOKENS_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let out = run(&[]).output().expect("chordkv-node runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen") && err.contains("--insecure"),
        "{err}"
    );
    let creds = credentials(dir.path());
    // With only the secret, clients would still be open: refused too.
    let out = run(&["--cluster-secret-file", path(&creds.secret)])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokens-file"));

    // `--insecure` starts it, and it says what is open.
    let mut child = run(&["--insecure", "--replicas", "1"])
        .spawn()
        .expect("spawn");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + CONVERGE;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    loop {
        let status = runtime.block_on(async {
            Client::connect(&addr.to_string(), Duration::from_secs(1))
                .await?
                .status()
                .await
        });
        if status.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the --insecure node never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("anyone on the network"), "{err}");
}

#[test]
fn idle_connections_lock_out_neither_peers_nor_clients() {
    const IDLE: usize = 2_000;
    let mut cluster = Cluster::new();
    let small = ["--max-connections", "200"];
    for i in 0..3 {
        cluster.start_node((i > 0).then_some(0), &small);
    }
    cluster.wait_for_ring(&[0, 1, 2]);
    assert_prints(&cluster.kvctl(0, &["put", "before", "1"]), b"ok\n");
    let target = cluster.addr(0);

    // Half never finish their handshake, half finish one as a client and then say nothing.
    let handshake = open_connector_bytes(Role::Client);
    let mut idle = Vec::with_capacity(IDLE);
    for n in 0..IDLE {
        let mut s = TcpStream::connect(target).expect("an idle connection");
        if n % 2 == 1 {
            s.write_all(&handshake).expect("handshake");
        } else {
            s.write_all(&wire::encode_hello(Role::Client)[..3])
                .expect("a partial hello");
        }
        idle.push(s);
    }
    // Some of the handshakes were answered: those connections hold the client budget now.
    let mut answered = 0;
    for s in idle.iter_mut().skip(1).step_by(2).take(50) {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut answer = [0u8; OPEN_ANSWER_LEN];
        if s.read_exact(&mut answer).is_ok() {
            answered += 1;
        }
    }
    assert!(answered > 0, "no idle client completed a handshake");

    // A peer rejoins (a restart of node 2, which dials node 0) and clients write, through node
    // 0, while the idle connections are still open.
    cluster.kill_node(2);
    cluster.restart_node(2, Some(0));
    cluster.wait_for_ring(&[0, 1, 2]);
    for n in 0..5 {
        let key = format!("during-{n}");
        assert_prints(&cluster.kvctl(0, &["put", &key, "ok"]), b"ok\n");
        assert_prints(&cluster.kvctl(0, &["get", &key]), b"ok");
    }
    drop(idle);
}

#[test]
fn a_clients_read_at_the_owner_is_checked_like_a_get() {
    use chordkv_node::session::{Floor, MAX_WROTE};
    use chordkv_node::version::Dot;
    let mut cluster = Cluster::new();
    let node = cluster.start_node(None, &["--replicas", "1"]);
    assert_prints(&cluster.kvctl(node, &["put", "k", "v"]), b"ok\n");
    let client = cluster.client(node);
    let read = |r: Option<u8>, session: Option<Box<Floor>>| Request::StoreGet {
        key: b"k".to_vec(),
        r,
        session,
    };
    let floor = Floor {
        wrote: (1..=MAX_WROTE as u64 + 1)
            .map(|counter| Dot {
                actor: Id::hash(b"n"),
                counter,
            })
            .collect(),
        ..Floor::default()
    };
    for (request, says) in [
        (read(Some(0), None), "quorum"),
        (read(Some(9), None), "quorum"),
        (read(None, Some(Box::new(floor))), "written dots"),
    ] {
        match cluster.block_on(client.call(request)) {
            Err(Error::InvalidInput(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("expected a refusal saying {says:?}, got {other:?}"),
        }
    }
    assert!(matches!(
        cluster.block_on(client.call(read(None, None))),
        Ok(Response::Read(_))
    ));
}
