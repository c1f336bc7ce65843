//! Tests of framing, limits and the multiplexed channel.

use super::*;
use crate::id::Id;
use crate::message::{NodeRef, WriteId};
use crate::version::VersionVector;
use tokio::io::{DuplexStream, duplex};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);

fn get(key: &[u8]) -> Request {
    Request::Get {
        key: key.to_vec(),
        r: None,
        session: None,
    }
}

fn frame(envelope: &Envelope) -> Vec<u8> {
    encode_frame(envelope, HARD_MAX_FRAME).expect("encodes")
}

fn ping(id: RequestId) -> Envelope {
    Envelope::Request {
        id,
        body: Request::Ping,
    }
}

fn node_ref() -> NodeRef {
    NodeRef {
        id: Id::hash(b"test node"),
        addr: "127.0.0.1:7000".parse().expect("addr"),
    }
}

#[test]
fn parse_frame_table() {
    let a = ping(1);
    let b = Envelope::Response {
        id: 2,
        body: Err(Error::WrongOwner),
    };
    let fa = frame(&a);
    let fb = frame(&b);
    let both = [fa.clone(), fb.clone()].concat();

    // Bodies that fail to decode: an unknown variant tag, and a valid frame's body cut short
    // but announced at its shortened length.
    let garbage = [&3u32.to_be_bytes()[..], &[0xff, 0xff, 0xff]].concat();
    let cut_len = fa.len() - PREFIX_LEN - 1;
    let cut = [
        &(cut_len as u32).to_be_bytes()[..],
        &fa[PREFIX_LEN..fa.len() - 1],
    ]
    .concat();
    let trailing = {
        let body = [&fa[PREFIX_LEN..], &[0u8][..]].concat();
        [&(body.len() as u32).to_be_bytes()[..], &body].concat()
    };
    let oversized = 1025u32.to_be_bytes().to_vec();

    enum Want {
        Incomplete,
        Frame(Envelope, usize),
        TooLarge,
        Invalid(&'static str),
    }
    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("empty buffer", vec![], Want::Incomplete),
        ("incomplete prefix", fa[..3].to_vec(), Want::Incomplete),
        ("prefix only", fa[..PREFIX_LEN].to_vec(), Want::Incomplete),
        (
            "incomplete body",
            fa[..fa.len() - 1].to_vec(),
            Want::Incomplete,
        ),
        ("exact frame", fa.clone(), Want::Frame(a.clone(), fa.len())),
        (
            "two frames: first",
            both.clone(),
            Want::Frame(a.clone(), fa.len()),
        ),
        (
            "two frames: second",
            both[fa.len()..].to_vec(),
            Want::Frame(b.clone(), fb.len()),
        ),
        ("oversized prefix alone", oversized, Want::TooLarge),
        ("garbage body", garbage, Want::Invalid("undecodable")),
        ("truncated body", cut, Want::Invalid("undecodable")),
        ("trailing bytes", trailing, Want::Invalid("trailing")),
    ];
    for (name, buf, want) in cases {
        let got = parse_frame(&buf, 1024);
        match (want, got) {
            (Want::Incomplete, Ok(None)) => {}
            (Want::Frame(env, n), Ok(Some((got, used)))) => {
                assert_eq!((got, used), (env, n), "{name}");
            }
            (Want::TooLarge, Err(Error::TooLarge { what, size, limit })) => {
                assert_eq!(
                    (what.as_str(), size, limit),
                    ("frame", 1025, 1024),
                    "{name}"
                );
            }
            (Want::Invalid(what), Err(Error::InvalidData(msg))) => {
                assert!(msg.contains(what), "{name}: {msg}");
            }
            (_, got) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

#[test]
fn max_frame_is_capped_by_the_hard_limit() {
    let prefix = ((HARD_MAX_FRAME + 1) as u32).to_be_bytes();
    assert!(matches!(
        check_frame(&prefix, usize::MAX),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn encode_frame_refuses_what_the_peer_would_refuse() {
    let big = Envelope::Request {
        id: 1,
        body: Request::Put {
            key: b"k".to_vec(),
            value: vec![7; 2000],
            context: VersionVector::new(),
            w: None,
            session: None,
            mode: Default::default(),
        },
    };
    match encode_frame(&big, 1024) {
        Err(Error::TooLarge { what, limit, .. }) => {
            assert_eq!((what.as_str(), limit), ("frame", 1024))
        }
        other => panic!("unexpected {other:?}"),
    }
    let ok = encode_frame(&big, 4096).expect("fits");
    assert_eq!(
        parse_frame(&ok, 4096).expect("parses"),
        Some((big, ok.len()))
    );
}

#[test]
fn check_request_table() {
    let limits = Limits {
        max_frame: 1 << 20,
        max_key: 4,
        max_value: 8,
    };
    let key_too_large = || Error::TooLarge {
        what: "key".into(),
        size: 5,
        limit: 4,
    };
    let value_too_large = Error::TooLarge {
        what: "value".into(),
        size: 9,
        limit: 8,
    };
    let empty = || Error::InvalidInput("empty key".into());
    let put = |k: &[u8], v: &[u8]| Request::Put {
        key: k.to_vec(),
        value: v.to_vec(),
        context: VersionVector::new(),
        w: None,
        session: None,
        mode: Default::default(),
    };
    let store_write = |k: &[u8], v: Option<Vec<u8>>| Request::StoreWrite {
        key: k.to_vec(),
        value: v,
        context: VersionVector::new(),
        w: None,
        write_id: WriteId {
            coordinator: node_ref().id,
            incarnation: 1,
            seq: 1,
        },
        session: None,
        mode: Default::default(),
    };
    let transfer = |items: Vec<(&[u8], &[u8])>, deletes: Vec<&[u8]>| Request::Transfer {
        from: node_ref(),
        items: items
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect(),
        deletes: deletes.into_iter().map(<[u8]>::to_vec).collect(),
        leaving: false,
    };
    let cases: Vec<(Request, Result<()>)> = vec![
        (get(b"abcd"), Ok(())),
        (get(b"abcde"), Err(key_too_large())),
        (get(b""), Err(empty())),
        (
            Request::Delete {
                key: vec![],
                context: VersionVector::new(),
                w: None,
                session: None,
                mode: Default::default(),
            },
            Err(empty()),
        ),
        (Request::Lookup { key: vec![1; 5] }, Err(key_too_large())),
        (
            Request::StoreGet {
                key: vec![1; 5],
                r: None,
                session: None,
            },
            Err(key_too_large()),
        ),
        (store_write(b"", None), Err(empty())),
        (store_write(b"k", None), Ok(())),
        (put(b"k", b"12345678"), Ok(())),
        (put(b"k", b""), Ok(())),
        (put(b"k", b"123456789"), Err(value_too_large.clone())),
        (put(b"", b"v"), Err(empty())),
        (
            store_write(b"k", Some(vec![0; 9])),
            Err(value_too_large.clone()),
        ),
        (transfer(vec![(b"a", b"1")], vec![b"b"]), Ok(())),
        // Transfer items are whole versioned states: only the frame bounds them.
        (transfer(vec![(b"a", &[0; 9])], vec![]), Ok(())),
        (transfer(vec![], vec![b"abcde"]), Err(key_too_large())),
        (transfer(vec![(b"", b"1")], vec![]), Err(empty())),
        (Request::Ping, Ok(())),
        (Request::Status, Ok(())),
    ];
    for (req, want) in cases {
        assert_eq!(limits.check_request(&req), want, "{req:?}");
    }
}

#[test]
fn a_state_at_the_default_state_bound_fits_a_default_frame_in_every_message_that_carries_it() {
    use crate::version::{VersionLimits, Versioned};
    let limits = Limits::default();
    assert_eq!(limits.max_state(), VersionLimits::default().max_state_bytes);
    // A state of exactly the bound, with a maximal key.
    let mut state = Versioned::empty();
    let value = vec![7u8; limits.max_state()];
    state.write(Id::hash(b"n"), &VersionVector::new(), Some(value));
    let mut bytes = state.encode();
    bytes.truncate(limits.max_state());
    let key = vec![b'k'; limits.max_key];
    let item = vec![(key.clone(), bytes.clone())];
    let messages = [
        Envelope::Request {
            id: u64::MAX,
            body: Request::Replicate {
                items: item.clone(),
            },
        },
        Envelope::Request {
            id: u64::MAX,
            body: Request::Handoff {
                from: node_ref(),
                items: item.clone(),
            },
        },
        Envelope::Response {
            id: u64::MAX,
            body: Ok(Response::SyncItems {
                items: item.clone(),
                complete: false,
            }),
        },
        Envelope::Response {
            id: u64::MAX,
            body: Ok(Response::HandedOff {
                keys: vec![key.clone()],
                states: item,
            }),
        },
        Envelope::Response {
            id: u64::MAX,
            body: Ok(Response::State(Some(bytes))),
        },
    ];
    for m in &messages {
        let frame = encode_frame(m, limits.max_frame);
        assert!(frame.is_ok(), "{:?}", frame.map(|f| f.len()));
    }
}

#[test]
fn default_limits_are_valid_and_validate_catches_bad_ones() {
    Limits::default().validate().expect("defaults are valid");
    let cramped = Limits {
        max_frame: 1 << 20,
        ..Limits::default()
    };
    assert!(matches!(cramped.validate(), Err(Error::InvalidInput(_))));
    let huge = Limits {
        max_frame: HARD_MAX_FRAME + 1,
        ..Limits::default()
    };
    assert!(matches!(huge.validate(), Err(Error::InvalidInput(_))));
}

#[test]
fn a_maximal_put_fits_a_default_frame() {
    let limits = Limits::default();
    let put = Envelope::Request {
        id: u64::MAX,
        body: Request::Put {
            key: vec![0xff; limits.max_key],
            value: vec![0xff; limits.max_value],
            context: VersionVector::new(),
            w: None,
            session: None,
            mode: Default::default(),
        },
    };
    let encoded = encode_frame(&put, limits.max_frame).expect("fits");
    assert!(encoded.len() - PREFIX_LEN <= limits.max_key + limits.max_value + ENVELOPE_SLACK);
}

#[tokio::test]
async fn hello_round_trip() {
    for role in [Role::Node, Role::Client] {
        let (mut a, mut b) = duplex(64);
        write_hello(&mut a, role).await.expect("write");
        assert_eq!(read_hello(&mut b, T).await, Ok(role));
    }
}

#[tokio::test]
async fn hello_with_bad_magic_is_refused_before_the_rest_arrives() {
    let (mut a, mut b) = duplex(64);
    // Only four bytes: an HTTP client's "GET ". The reader must not wait for three more.
    a.write_all(b"GET ").await.expect("write");
    assert_eq!(
        read_hello(&mut b, T).await,
        Err(Error::InvalidData("not a chordkv peer: bad magic".into()))
    );
}

#[tokio::test]
async fn hello_with_another_version_or_role_is_refused() {
    let (mut a, mut b) = duplex(64);
    let mut hello = encode_hello(Role::Node);
    hello[4..6].copy_from_slice(&7u16.to_be_bytes());
    a.write_all(&hello).await.expect("write");
    assert_eq!(
        read_hello(&mut b, T).await,
        Err(Error::VersionMismatch {
            ours: VERSION,
            theirs: 7
        })
    );

    let mut hello = encode_hello(Role::Node);
    hello[6] = 9;
    assert!(matches!(parse_hello(&hello), Err(Error::InvalidData(_))));
}

#[tokio::test]
async fn hello_ends_cleanly_on_silence_and_hang_up() {
    let (_a, mut b) = duplex(64);
    assert!(matches!(
        read_hello(&mut b, Duration::from_millis(20)).await,
        Err(Error::Timeout(_))
    ));
    let (mut a, mut b) = duplex(64);
    a.write_all(b"CHK").await.expect("write");
    drop(a);
    assert!(matches!(
        read_hello(&mut b, T).await,
        Err(Error::Unavailable(_))
    ));
}

#[tokio::test]
async fn frame_reader_and_writer_round_trip() {
    let (a, b) = duplex(16); // small, so frames cross in pieces
    let sent: Vec<Envelope> = (1..=5)
        .map(|id| Envelope::Request {
            id,
            body: Request::Put {
                key: format!("key{id}").into_bytes(),
                value: vec![id as u8; 100 * id as usize],
                context: VersionVector::new(),
                w: None,
                session: None,
                mode: Default::default(),
            },
        })
        .collect();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        let mut w = FrameWriter::new(a, 1 << 20);
        for envelope in &to_send {
            w.write_frame(envelope).await.expect("write");
        }
    });
    let mut r = FrameReader::new(b, 1 << 20);
    for want in &sent {
        assert_eq!(r.read_frame().await.expect("read").as_ref(), Some(want));
    }
    writer.await.expect("writer");
    assert_eq!(r.read_frame().await, Ok(None), "clean EOF between frames");
}

#[tokio::test]
async fn frame_reader_reports_eof_mid_frame() {
    let (mut a, b) = duplex(64);
    let f = frame(&ping(1));
    a.write_all(&f[..f.len() - 1]).await.expect("write");
    drop(a);
    let mut r = FrameReader::new(b, 1024);
    assert_eq!(
        r.read_frame().await,
        Err(Error::InvalidData("connection closed mid-frame".into()))
    );
}

#[tokio::test]
async fn frame_reader_refuses_an_oversized_prefix_without_waiting_for_the_body() {
    let (mut a, b) = duplex(64);
    a.write_all(&(1u32 << 30).to_be_bytes())
        .await
        .expect("write");
    // `a` stays open and sends nothing more: the reader must answer from the prefix alone.
    let mut r = FrameReader::new(b, 1024);
    let got = tokio::time::timeout(T, r.read_frame())
        .await
        .expect("no wait");
    assert!(matches!(got, Err(Error::TooLarge { .. })), "{got:?}");
}

// ---- Channel ----

/// Accepts one connection as a node would: reads the client's hello, answers with its own,
/// and returns the framed halves.
async fn accept(
    listener: &TcpListener,
) -> (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let gate = crate::auth::Gate::default();
    let accepted = handshake::accept(&mut stream, &gate, T).await;
    assert_eq!(accepted, Ok((Role::Client, crate::auth::Access::ReadWrite)));
    let (r, w) = stream.into_split();
    (FrameReader::new(r, 1 << 20), FrameWriter::new(w, 1 << 20))
}

/// What the test server answers: Ping -> Pong, Get -> the key echoed as the value,
/// anything else -> WrongOwner.
fn answer(req: Request) -> Result<Response> {
    match req {
        Request::Ping => Ok(Response::Pong { node: node_ref() }),
        Request::Get { key, .. } => Ok(Response::State(Some(key))),
        _ => Err(Error::WrongOwner),
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

async fn client(addr: SocketAddr) -> Channel {
    Channel::connect(addr, Role::Client, Limits::default(), T)
        .await
        .expect("connect")
}

#[tokio::test]
async fn channel_matches_out_of_order_answers_to_their_calls() {
    const CALLS: usize = 10;
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut r, mut w) = accept(&listener).await;
        // Collect every request before answering any, then answer last first.
        let mut requests = Vec::new();
        while requests.len() < CALLS {
            match r.read_frame().await.expect("read") {
                Some(Envelope::Request { id, body }) => requests.push((id, body)),
                other => panic!("unexpected {other:?}"),
            }
        }
        for (id, body) in requests.into_iter().rev() {
            let response = Envelope::Response {
                id,
                body: answer(body),
            };
            w.write_frame(&response).await.expect("write");
        }
        (r, w) // keep the connection open until the test ends
    });

    let channel = client(addr).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let channel = channel.clone();
        calls.spawn(async move {
            let req = match i {
                0 => Request::Ping,
                1 => Request::Status,
                _ => get(format!("key-{i}").as_bytes()),
            };
            (i, channel.call(req, T).await)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (i, got) = done.expect("call task");
        let want = match i {
            0 => Ok(Response::Pong { node: node_ref() }),
            1 => Err(Error::WrongOwner),
            _ => Ok(Response::State(Some(format!("key-{i}").into_bytes()))),
        };
        assert_eq!(got, want, "call {i}");
    }
    assert!(!channel.is_closed());
    server.await.expect("server");
}

#[tokio::test]
async fn channel_fails_pending_and_later_calls_when_the_node_hangs_up() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut r, w) = accept(&listener).await;
        let first = r.read_frame().await.expect("read");
        assert!(matches!(first, Some(Envelope::Request { .. })));
        drop((r, w));
    });
    let channel = client(addr).await;
    let got = channel.call(Request::Ping, T).await;
    assert!(matches!(got, Err(Error::Unreachable(_))), "{got:?}");
    assert!(channel.is_closed());
    let later = channel.call(Request::Ping, T).await;
    assert!(matches!(later, Err(Error::Unreachable(_))), "{later:?}");
    server.await.expect("server");
}

#[tokio::test]
async fn channel_reports_the_nodes_closing_notice() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut r, mut w) = accept(&listener).await;
        r.read_frame().await.expect("read");
        let notice = Envelope::Response {
            id: NOTICE_ID,
            body: Err(Error::InvalidData("undecodable frame".into())),
        };
        w.write_frame(&notice).await.expect("write");
        w.shutdown().await.expect("shutdown");
        r
    });
    let channel = client(addr).await;
    match channel.call(Request::Ping, T).await {
        Err(Error::Unreachable(msg)) => assert!(msg.contains("undecodable frame"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    server.await.expect("server");
}

#[tokio::test]
async fn channel_call_times_out_and_forgets_the_call() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut r, w) = accept(&listener).await;
        // Read requests and never answer, until the client hangs up.
        while let Ok(Some(_)) = r.read_frame().await {}
        drop(w);
    });
    let channel = client(addr).await;
    let got = channel.call(Request::Ping, Duration::from_millis(50)).await;
    assert!(matches!(got, Err(Error::Timeout(_))), "{got:?}");
    assert_eq!(channel.inner.shared.state().pending.len(), 0);
    assert!(!channel.is_closed());
    drop(channel); // closes the connection, which ends the server
    tokio::time::timeout(T, server)
        .await
        .expect("dropping the channel closes the connection")
        .expect("server");
}

#[tokio::test]
async fn channel_to_a_closed_port_is_unreachable() {
    let (listener, addr) = listen().await;
    drop(listener);
    match Channel::connect(addr, Role::Client, Limits::default(), T).await {
        Err(Error::Unreachable(msg)) => {
            assert!(msg.starts_with(&format!("node {addr}")), "{msg}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn channel_refuses_a_peer_that_is_not_a_node() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        read_hello(&mut stream, T).await.expect("hello");
        write_hello(&mut stream, Role::Client).await.expect("hello");
        stream
    });
    let got = Channel::connect(addr, Role::Client, Limits::default(), T).await;
    assert!(matches!(got, Err(Error::InvalidData(_))), "{got:?}");
    server.await.expect("server");
}

#[tokio::test]
async fn channel_checks_limits_before_sending() {
    let (listener, addr) = listen().await;
    let _server = tokio::spawn(async move { accept(&listener).await });
    let channel = client(addr).await;
    let got = channel.call(get(b""), T).await;
    assert_eq!(got, Err(Error::InvalidInput("empty key".into())));
    assert!(!channel.is_closed());
}

#[test]
fn encode_answer_replaces_only_a_response_that_does_not_fit() {
    let answer = |size: usize| Envelope::Response {
        id: 9,
        body: Ok(Response::State(Some(vec![1; size]))),
    };
    let (frame, replaced) = encode_answer(&answer(10), 1024).expect("fits");
    assert_eq!(replaced, None);
    assert_eq!(frame, encode_frame(&answer(10), 1024).expect("fits"));

    let (frame, replaced) = encode_answer(&answer(2000), 1024).expect("an error answer fits");
    let Some(Error::TooLarge { what, size, limit }) = replaced.clone() else {
        panic!("expected TooLarge, got {replaced:?}");
    };
    assert_eq!((what.as_str(), limit), ("response", 1024));
    assert!(size > 2000, "{size}");
    let parsed = parse_frame(&frame, 1024).expect("parses").map(|(e, _)| e);
    let want = Envelope::Response {
        id: 9,
        body: Err(replaced.expect("replaced")),
    };
    assert_eq!(parsed, Some(want), "an error answer to the same request");

    let request = Envelope::Request {
        id: 9,
        body: Request::Replicate {
            items: vec![(b"k".to_vec(), vec![0; 2000])],
        },
    };
    assert!(matches!(
        encode_answer(&request, 1024),
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn channel_refuses_an_oversized_request_locally_and_stays_usable() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut rd, mut wr) = accept(&listener).await;
        while let Ok(Some(Envelope::Request { id, body })) = rd.read_frame().await {
            let answer = Envelope::Response {
                id,
                body: answer(body),
            };
            wr.write_frame(&answer).await.expect("write");
        }
    });
    let limits = Limits {
        max_frame: 4096,
        max_key: 2048,
        max_value: 1024,
    };
    let channel = Channel::connect(addr, Role::Client, limits, T)
        .await
        .expect("connect");
    let got = channel.call(get(&[b'k'; 2048]), T).await;
    assert_eq!(got, Ok(Response::State(Some(vec![b'k'; 2048]))));
    let big = Request::Replicate {
        items: vec![(b"k".to_vec(), vec![0; 8192])],
    };
    match channel.call(big, T).await {
        Err(Error::TooLarge { what, limit, .. }) => {
            assert_eq!((what.as_str(), limit), ("request", 4096));
        }
        other => panic!("expected the request refused locally, got {other:?}"),
    }
    assert!(!channel.is_closed());
    let got = channel.call(Request::Ping, T).await;
    assert_eq!(got, Ok(Response::Pong { node: node_ref() }));
    drop(channel);
    server.await.expect("server");
}

#[tokio::test]
async fn channel_bounds_calls_in_flight() {
    const BOUND: usize = 2;
    const CALLS: usize = 5;
    let (client_end, server_end): (DuplexStream, DuplexStream) = duplex(1 << 16);
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let server = tokio::spawn(async move {
        let mut stream = server_end;
        let gate = crate::auth::Gate::default();
        handshake::accept(&mut stream, &gate, T)
            .await
            .expect("handshake");
        let (r, w) = tokio::io::split(stream);
        let (mut r, mut w) = (FrameReader::new(r, 1 << 20), FrameWriter::new(w, 1 << 20));
        let mut answered = 0;
        while answered < CALLS {
            // Take what arrives until the line goes quiet; never more than BOUND at once.
            let mut batch = Vec::new();
            while let Ok(frame) =
                tokio::time::timeout(Duration::from_millis(100), r.read_frame()).await
            {
                match frame.expect("read") {
                    Some(Envelope::Request { id, body }) => batch.push((id, body)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(batch.len() <= BOUND, "{} calls in flight", batch.len());
            for (id, body) in batch {
                let response = Envelope::Response {
                    id,
                    body: answer(body),
                };
                w.write_frame(&response).await.expect("write");
                answered += 1;
            }
        }
    });
    let dialer = Dialer::open(Role::Client, Limits::default());
    let channel = Channel::start(client_end, peer, &dialer, T, BOUND)
        .await
        .expect("channel");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let channel = channel.clone();
        calls.spawn(async move { channel.call(Request::Ping, T).await });
    }
    while let Some(done) = calls.join_next().await {
        assert!(matches!(done.expect("task"), Ok(Response::Pong { .. })));
    }
    server.await.expect("server");
}

#[test]
fn channel_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Channel>();
}

// ---- bounds on the lists a message carries (message.rs, BOUNDS) ----

/// One message per list a message carries, each list `n` long (the lists of one kind share
/// one bound, so one length stands for all of them): items for [`MAX_ITEMS`], nodes for
/// [`MAX_NODES`], tree nodes for [`MAX_TREE_NODES`], values for the siblings' bound.
fn every_list(
    items: usize,
    nodes: usize,
    tree: usize,
    values: usize,
) -> Vec<(&'static str, Envelope)> {
    let key = |i: usize| (i as u32).to_be_bytes().to_vec();
    let keys = |n: usize| (0..n).map(key).collect::<Vec<_>>();
    let pairs = |n: usize| (0..n).map(|i| (key(i), vec![0])).collect::<Vec<_>>();
    let digests = |n: usize| (0..n).map(|i| (key(i), i as u64)).collect::<Vec<_>>();
    let refs = vec![node_ref(); nodes];
    let request = |body| Envelope::Request { id: 1, body };
    let response = |body| Envelope::Response {
        id: 1,
        body: Ok(body),
    };
    vec![
        (
            "transfer items",
            request(Request::Transfer {
                from: node_ref(),
                items: pairs(items),
                deletes: vec![],
                leaving: false,
            }),
        ),
        (
            "transfer deletes",
            request(Request::Transfer {
                from: node_ref(),
                items: vec![],
                deletes: keys(items),
                leaving: true,
            }),
        ),
        (
            "replicate",
            request(Request::Replicate {
                items: pairs(items),
            }),
        ),
        (
            "sync fetch",
            request(Request::SyncFetch {
                keys: keys(items),
                max_bytes: 1,
            }),
        ),
        (
            "handoff",
            request(Request::Handoff {
                from: node_ref(),
                items: pairs(items),
            }),
        ),
        (
            "reap",
            request(Request::Reap {
                items: digests(items),
                commit: true,
            }),
        ),
        (
            "sync tree",
            request(Request::SyncTree {
                asker: node_ref(),
                from: Id::ZERO,
                to: Id::MAX,
                level: 1,
                nodes: (0..tree as u32).map(|i| (i, 7)).collect(),
            }),
        ),
        (
            "find successor",
            request(Request::FindSuccessor {
                target: Id::ZERO,
                avoid: vec![Id::MAX; nodes],
            }),
        ),
        (
            "leaving",
            request(Request::Leaving {
                node: node_ref(),
                pred: None,
                succs: refs.clone(),
            }),
        ),
        (
            "block",
            request(Request::Block {
                peers: vec![node_ref().addr; nodes],
            }),
        ),
        (
            "neighbors",
            response(Response::Neighbors {
                pred: None,
                succs: refs.clone(),
            }),
        ),
        (
            "sync keys differ",
            response(Response::SyncKeys {
                differ: (0..tree as u32).collect(),
                keys: vec![],
                complete: true,
                stray: false,
            }),
        ),
        (
            "sync keys keys",
            response(Response::SyncKeys {
                differ: vec![],
                keys: digests(items),
                complete: false,
                stray: false,
            }),
        ),
        (
            "sync items",
            response(Response::SyncItems {
                items: pairs(items),
                complete: true,
            }),
        ),
        (
            "handed off keys",
            response(Response::HandedOff {
                keys: keys(items),
                states: vec![],
            }),
        ),
        (
            "handed off states",
            response(Response::HandedOff {
                keys: vec![],
                states: pairs(items),
            }),
        ),
        (
            "reaped keys",
            response(Response::Reaped {
                keys: keys(items),
                absent: vec![],
            }),
        ),
        (
            "reaped absent",
            response(Response::Reaped {
                keys: vec![],
                absent: keys(items),
            }),
        ),
        (
            "read values",
            response(Response::Read(crate::message::ReadReply {
                values: vec![vec![1]; values],
                context: VersionVector::new(),
                deps: Default::default(),
                stable: false,
            })),
        ),
        (
            "status",
            response(Response::Status(crate::message::NodeStatus {
                node: node_ref(),
                joined: true,
                pred: None,
                succs: refs.clone(),
                fingers: refs,
                keys: 0,
                owned: 0,
                replicas: 1,
                replicas_wanted: 1,
                successors_wanted: 1,
            })),
        ),
    ]
}

#[test]
fn the_longest_lists_the_protocol_may_send_decode() {
    use crate::message::{MAX_ITEMS, MAX_NODES, MAX_TREE_NODES};
    use crate::version::MAX_SIBLINGS;
    for (what, envelope) in every_list(MAX_ITEMS, MAX_NODES, MAX_TREE_NODES, MAX_SIBLINGS) {
        let frame = encode_frame(&envelope, Limits::default().max_frame).expect(what);
        let (decoded, _) = parse_frame(&frame, Limits::default().max_frame)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .expect(what);
        assert_eq!(decoded, envelope, "{what}");
    }
}

#[test]
fn a_list_one_over_its_bound_is_invalid_data() {
    use crate::message::{MAX_ITEMS, MAX_NODES, MAX_TREE_NODES};
    use crate::version::MAX_SIBLINGS;
    let over = every_list(
        MAX_ITEMS + 1,
        MAX_NODES + 1,
        MAX_TREE_NODES + 1,
        MAX_SIBLINGS + 1,
    );
    for (what, envelope) in over {
        let frame = frame(&envelope);
        match parse_frame(&frame, HARD_MAX_FRAME) {
            Err(Error::InvalidData(m)) => assert!(m.contains("at most"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A frame of `SyncFetch` whose key list announces `count` keys, followed by `present` of
/// them (one byte each): written by hand, as no sender would make it.
fn sync_fetch_flood(count: u64, present: usize) -> Vec<u8> {
    // Envelope::Request (0), id 1, Request::SyncFetch (13), the count as a varint u64 (tag
    // 253 and 8 bytes), the keys (length 1, one byte), max_bytes 0.
    let mut body = vec![0u8, 1, 13, 253];
    body.extend_from_slice(&count.to_le_bytes());
    for i in 0..present {
        body.extend_from_slice(&[1, i as u8]);
    }
    body.push(0);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn a_default_frame_of_four_million_one_byte_keys_is_refused_before_they_are_decoded() {
    // Before the bound this decoded, taking some 220 MB and half a second to a second
    // (examples/decode_flood.rs measures it). The refusal comes from the announced length:
    // the same frame with no key present at all is refused the same way, not as a frame that
    // ends too early, so no key was decoded (or allocated) before it.
    let max_frame = Limits::default().max_frame;
    let count = (max_frame - 13) / 2;
    for present in [count, 0] {
        let frame = sync_fetch_flood(count as u64, present);
        assert!(frame.len() <= PREFIX_LEN + max_frame);
        match parse_frame(&frame, max_frame) {
            Err(Error::InvalidData(m)) => {
                assert!(m.contains(&format!("invalid length {count}")), "{m}");
                assert!(m.contains("at most 4096"), "{m}");
            }
            other => panic!(
                "{present} keys present: {:?}",
                other.map(|o| o.map(|(_, n)| n))
            ),
        }
    }
    // And at the bound, the same shape decodes.
    let frame = sync_fetch_flood(crate::message::MAX_ITEMS as u64, crate::message::MAX_ITEMS);
    assert!(matches!(
        parse_frame(&frame, max_frame),
        Ok(Some((Envelope::Request { body: Request::SyncFetch { keys, .. }, .. }, _)))
            if keys.len() == crate::message::MAX_ITEMS
    ));
}
