use super::*;
use crate::auth::Tokens;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, DuplexStream, ReadBuf};

const T: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"the cluster secret, 32 bytes....";

fn secret(bytes: &[u8]) -> Secret {
    Secret::new(bytes).expect("secret")
}

fn token(text: &str) -> Token {
    text.parse().expect("token")
}

fn tokens() -> Arc<Tokens> {
    Arc::new(
        "read-write app:0123456789abcdef0123456789abcdef\n\
         read-only dash:fedcba9876543210fedcba9876543210\n"
            .parse()
            .expect("tokens"),
    )
}

/// Runs both sides of a handshake over an in-memory pipe.
async fn run(
    role: Role,
    credential: Credential,
    gate: Gate,
) -> (Result<()>, Result<(Role, Access)>) {
    let (mut a, mut b) = tokio::io::duplex(4096);
    let connector = async move { connect(&mut a, role, &credential, T).await };
    let acceptor = async move { accept(&mut b, &gate, T).await };
    tokio::join!(connector, acceptor)
}

fn unauthorized<T: std::fmt::Debug>(r: &Result<T>, says: &str) {
    match r {
        Err(Error::Unauthorized(m)) => assert!(m.contains(says), "{m:?} does not say {says:?}"),
        other => panic!("expected Unauthorized({says:?}), got {other:?}"),
    }
}

#[tokio::test]
async fn open_nodes_take_anyone_with_the_role_announced() {
    let (c, a) = run(Role::Client, Credential::None, Gate::default()).await;
    assert_eq!((c, a), (Ok(()), Ok((Role::Client, Access::ReadWrite))));
    let (c, a) = run(Role::Node, Credential::None, Gate::default()).await;
    assert_eq!((c, a), (Ok(()), Ok((Role::Node, Access::Node))));
}

#[tokio::test]
async fn a_node_proves_the_cluster_secret_or_is_refused() {
    let gate = Gate {
        cluster: Some(secret(SECRET)),
        tokens: None,
    };
    let right = Credential::Cluster(secret(SECRET));
    let (c, a) = run(Role::Node, right, gate.clone()).await;
    assert_eq!((c, a), (Ok(()), Ok((Role::Node, Access::Node))));

    let wrong = Credential::Cluster(secret(b"not the cluster secret at all..."));
    let (c, a) = run(Role::Node, wrong, gate.clone()).await;
    unauthorized(&c, "wrong cluster secret");
    unauthorized(&a, "wrong cluster secret");

    let (c, _) = run(Role::Node, Credential::None, gate.clone()).await;
    unauthorized(&c, "requires the cluster secret");

    // A client token is no cluster secret, even one with the same bytes.
    let as_token = Credential::Token(Token {
        name: "x".into(),
        secret: secret(SECRET),
    });
    let (c, a) = run(Role::Node, as_token, gate).await;
    unauthorized(&c, "proves the cluster secret");
    unauthorized(&a, "proves the cluster secret");
}

#[tokio::test]
async fn clients_prove_a_token_and_get_its_access() {
    let gate = Gate {
        cluster: Some(secret(SECRET)),
        tokens: Some(tokens()),
    };
    let rw = Credential::Token(token("app:0123456789abcdef0123456789abcdef"));
    assert_eq!(
        run(Role::Client, rw, gate.clone()).await.1,
        Ok((Role::Client, Access::ReadWrite))
    );
    let ro = Credential::Token(token("dash:fedcba9876543210fedcba9876543210"));
    assert_eq!(
        run(Role::Client, ro, gate.clone()).await.1,
        Ok((Role::Client, Access::ReadOnly))
    );
    for bad in [
        "app:fedcba9876543210fedcba9876543210",
        "nobody:0123456789abcdef0123456789abcdef",
    ] {
        let (c, a) = run(Role::Client, Credential::Token(token(bad)), gate.clone()).await;
        unauthorized(&c, "unknown token or wrong secret");
        unauthorized(&a, "unknown token or wrong secret");
    }
    let (c, _) = run(Role::Client, Credential::None, gate.clone()).await;
    unauthorized(&c, "requires a client token");
    // The cluster secret does not make a client.
    let (_, a) = run(Role::Client, Credential::Cluster(secret(SECRET)), gate).await;
    unauthorized(&a, "unknown token");
}

#[tokio::test]
async fn a_credential_is_not_given_to_a_node_that_asks_for_none() {
    let (c, a) = run(
        Role::Node,
        Credential::Cluster(secret(SECRET)),
        Gate::default(),
    )
    .await;
    unauthorized(&c, "does not authenticate nodes");
    assert!(a.is_err(), "the acceptor saw the connector hang up: {a:?}");
}

/// An acceptor that asks for a proof but cannot check it, and answers "accepted" with a proof
/// of its own making: what an impostor can do without the secret.
#[tokio::test]
async fn a_node_that_cannot_prove_the_secret_is_not_trusted() {
    let (mut a, mut b) = tokio::io::duplex(4096);
    let impostor = async move {
        let mut hello = [0u8; 7 + NONCE_LEN];
        b.read_exact(&mut hello).await.expect("hello");
        let mut answer = encode_hello(Role::Node).to_vec();
        answer.push(1);
        answer.extend_from_slice(&[7; NONCE_LEN]);
        b.write_all(&answer).await.expect("answer");
        let mut proof = [0u8; 1 + PROOF_LEN];
        b.read_exact(&mut proof).await.expect("proof");
        b.write_all(&[0; 1 + PROOF_LEN]).await.expect("accept");
        b
    };
    let credential = Credential::Cluster(secret(SECRET));
    let (c, _b) = tokio::join!(connect(&mut a, Role::Node, &credential, T), impostor);
    unauthorized(&c, "could not prove it holds the cluster secret");
}

/// Records what is read through it: the connector's side of a handshake, seen by the acceptor.
struct Recorder {
    inner: DuplexStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Ok(mut seen) = this.seen.lock() {
            seen.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_replayed_handshake_is_refused() {
    let gate = Gate {
        cluster: Some(secret(SECRET)),
        tokens: None,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut a, b) = tokio::io::duplex(4096);
    let mut recorded = Recorder {
        inner: b,
        seen: Arc::clone(&seen),
    };
    let credential = Credential::Cluster(secret(SECRET));
    let (c, acc) = tokio::join!(
        connect(&mut a, Role::Node, &credential, T),
        accept(&mut recorded, &gate, T)
    );
    assert_eq!((c, acc), (Ok(()), Ok((Role::Node, Access::Node))));
    let replay = seen.lock().expect("recording").clone();
    assert_eq!(replay.len(), 7 + NONCE_LEN + 1 + PROOF_LEN);

    // The same bytes, sent to the acceptor again: its fresh nonce makes the old proof wrong.
    let (mut attacker, mut node) = tokio::io::duplex(4096);
    attacker.write_all(&replay).await.expect("replay");
    unauthorized(&accept(&mut node, &gate, T).await, "wrong cluster secret");
}

#[tokio::test]
async fn silence_and_garbage_end_the_handshake() {
    let (_quiet, mut node) = tokio::io::duplex(64);
    let short = Duration::from_millis(100);
    assert!(matches!(
        accept(&mut node, &Gate::default(), short).await,
        Err(Error::Timeout(_))
    ));
    let (mut junk, mut node) = tokio::io::duplex(64);
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    assert!(matches!(
        accept(&mut node, &Gate::default(), T).await,
        Err(Error::InvalidData(_))
    ));
    // A name longer than any token's is refused before it is read.
    let (mut c, mut node) = tokio::io::duplex(4096);
    let mut hello = encode_hello(Role::Client).to_vec();
    hello.extend_from_slice(&[0; NONCE_LEN]);
    hello.push(200);
    c.write_all(&hello).await.expect("write");
    let gate = Gate {
        cluster: None,
        tokens: Some(tokens()),
    };
    unauthorized(&accept(&mut node, &gate, T).await, "too long");
}
