//! Writes the fuzz targets' seed corpora (`fuzz/corpus/<target>/`) from real encodings: frames
//! and envelopes of typical requests and responses, states with siblings, tombstones, deps and
//! applied write ids, and context tokens. Run from the workspace root:
//!
//! ```text
//! cargo run --example fuzz_corpus
//! ```
//!
//! It rewrites the same files each time; commit what changes. See `docs/fuzzing.md`.

use chordkv_node::Error;
use chordkv_node::id::Id;
use chordkv_node::message::{Envelope, NodeRef, ReadReply, Request, Response, Route};
use chordkv_node::session::Deps;
use chordkv_node::version::{Context, VersionVector, Versioned, WriteId};
use chordkv_node::wire::{HARD_MAX_FRAME, PREFIX_LEN, encode_frame};
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let envelopes = envelopes();
    for (name, envelope) in &envelopes {
        let frame = encode_frame(envelope, HARD_MAX_FRAME).expect("a seed encodes");
        write(&root.join("frame"), name, &frame)?;
        write(&root.join("envelope"), name, &frame[PREFIX_LEN..])?;
    }
    // Two frames back to back, as a stream carries them.
    let two: Vec<u8> = envelopes[..2]
        .iter()
        .flat_map(|(_, e)| encode_frame(e, HARD_MAX_FRAME).expect("a seed encodes"))
        .collect();
    write(&root.join("frame"), "two-frames", &two)?;

    let states = states();
    for (name, state) in &states {
        // The target's input: a cut byte, then one state (or two, split at the cut).
        let bytes = state.encode();
        write(
            &root.join("version_state"),
            name,
            &[&[u8::MAX][..], &bytes].concat(),
        )?;
    }
    let (a, b) = (states[2].1.encode(), states[3].1.encode());
    let cut = u8::try_from(a.len()).expect("a small state");
    write(
        &root.join("version_state"),
        "two-states",
        &[&[cut][..], &a, &b].concat(),
    )?;

    for (name, state) in &states {
        let token = Context::from(state.context().clone()).to_token();
        write(&root.join("context"), name, token.as_bytes())?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn node(i: u8) -> NodeRef {
    NodeRef {
        id: Id::hash(&[i]),
        addr: format!("127.0.0.1:{}", 7000 + u16::from(i))
            .parse()
            .expect("an address"),
    }
}

fn context(entries: &[(u8, u64)]) -> VersionVector {
    entries.iter().map(|&(a, c)| (node(a).id, c)).collect()
}

fn envelopes() -> Vec<(&'static str, Envelope)> {
    let request = |id, body| Envelope::Request { id, body };
    let response = |id, body| Envelope::Response { id, body };
    let item = |k: &str| (k.as_bytes().to_vec(), states()[2].1.encode());
    vec![
        ("ping", request(1, Request::Ping)),
        (
            "get",
            request(
                2,
                Request::Get {
                    key: b"k".to_vec(),
                    r: Some(2),
                    session: None,
                },
            ),
        ),
        (
            "put",
            request(
                3,
                Request::Put {
                    key: b"key".to_vec(),
                    value: b"value".to_vec(),
                    context: context(&[(1, 2), (2, 1)]),
                    w: None,
                    session: None,
                    mode: Default::default(),
                },
            ),
        ),
        (
            "find-successor",
            request(
                4,
                Request::FindSuccessor {
                    target: Id::MAX,
                    avoid: vec![node(3).id],
                },
            ),
        ),
        (
            "leaving",
            request(
                5,
                Request::Leaving {
                    node: node(1),
                    pred: Some(node(0)),
                    succs: vec![node(2), node(3)],
                },
            ),
        ),
        (
            "transfer",
            request(
                6,
                Request::Transfer {
                    from: node(1),
                    items: vec![item("a"), item("b")],
                    deletes: vec![b"c".to_vec()],
                    leaving: false,
                },
            ),
        ),
        (
            "replicate",
            request(
                7,
                Request::Replicate {
                    items: vec![item("a")],
                },
            ),
        ),
        (
            "sync-tree",
            request(
                8,
                Request::SyncTree {
                    asker: node(1),
                    from: Id::ZERO,
                    to: Id::MAX,
                    level: 1,
                    nodes: vec![(0, 1), (3, u64::MAX)],
                },
            ),
        ),
        (
            "sync-fetch",
            request(
                9,
                Request::SyncFetch {
                    keys: vec![b"a".to_vec(), b"b".to_vec()],
                    max_bytes: 1 << 20,
                },
            ),
        ),
        (
            "reap",
            request(
                10,
                Request::Reap {
                    items: vec![(b"a".to_vec(), 7)],
                    commit: true,
                },
            ),
        ),
        (
            "block",
            request(
                11,
                Request::Block {
                    peers: vec![node(2).addr],
                },
            ),
        ),
        (
            "neighbors",
            response(
                1,
                Ok(Response::Neighbors {
                    pred: Some(node(0)),
                    succs: vec![node(2)],
                }),
            ),
        ),
        (
            "route",
            response(2, Ok(Response::Route(Route::Next(node(4))))),
        ),
        (
            "read",
            response(
                3,
                Ok(Response::Read(ReadReply {
                    values: vec![b"x".to_vec(), b"y".to_vec()],
                    context: context(&[(1, 3)]),
                    deps: Deps::new(),
                    stable: true,
                })),
            ),
        ),
        (
            "sync-keys",
            response(
                4,
                Ok(Response::SyncKeys {
                    differ: vec![1, 2],
                    keys: vec![(b"a".to_vec(), 9)],
                    complete: false,
                    stray: false,
                }),
            ),
        ),
        (
            "error",
            response(
                5,
                Err(Error::TooLarge {
                    what: "value".into(),
                    size: 9,
                    limit: 8,
                }),
            ),
        ),
        (
            "notice",
            response(0, Err(Error::InvalidData("undecodable frame".into()))),
        ),
    ]
}

fn states() -> Vec<(&'static str, Versioned)> {
    let (a, b) = (node(1).id, node(2).id);
    let empty = Versioned::empty();
    let mut one = Versioned::empty();
    one.write(a, &VersionVector::new(), Some(b"v1".to_vec()));
    // Two concurrent writes: siblings.
    let mut siblings = one.clone();
    siblings.write(b, &VersionVector::new(), Some(b"v2".to_vec()));
    // A delete of what was read: a tombstone, with a session's deps and an applied write id.
    let mut tomb = siblings.clone();
    let mut deps = Deps::new();
    deps.add(b"other", &context(&[(3, 4)]));
    let dot = tomb.write_replacing(a, &siblings.context().clone(), &[], None, Some(&deps));
    tomb.record_applied(
        WriteId {
            coordinator: a,
            incarnation: 1,
            seq: 7,
        },
        dot,
    );
    let mut pruned = tomb.clone();
    pruned.raise_dot_floor(1 << 20);
    pruned.write(b, &VersionVector::new(), Some(vec![0; 64]));
    vec![
        ("empty", empty),
        ("one", one),
        ("siblings", siblings),
        ("tombstone", tomb),
        ("floor", pruned),
    ]
}
