//! Tests of versions: writes, merges and their laws, bounds, pruning, encoding.

#![allow(clippy::unwrap_used)]

use super::test_support::{dot, n, val, vv};
use super::*;
use crate::testing::history::{self, History};
use proptest::prelude::*;

fn values(v: &Versioned) -> Vec<&str> {
    v.values()
        .into_iter()
        .map(|b| std::str::from_utf8(b).unwrap())
        .collect()
}

fn merged(a: &Versioned, b: &Versioned) -> Versioned {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// Entries `(actor byte, counter)` of a vector in a table.
type Entries = &'static [(u8, u64)];

#[test]
fn compare_table() {
    use Causality::*;
    let cases: &[(Entries, Entries, Causality)] = &[
        (&[], &[], Equal),
        (&[(1, 1)], &[(1, 1)], Equal),
        (&[(1, 0)], &[], Equal), // zero entries are absent entries
        (&[], &[(1, 1)], Before),
        (&[(1, 1)], &[(1, 2)], Before),
        (&[(1, 1)], &[(1, 1), (2, 1)], Before),
        (&[(1, 2), (2, 1)], &[(1, 1)], After),
        (&[(1, 1)], &[(2, 1)], Concurrent),
        (&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Concurrent),
    ];
    for (a, b, want) in cases {
        let (a, b) = (vv(a), vv(b));
        assert_eq!(a.compare(&b), *want, "{a:?} vs {b:?}");
        let back = match want {
            Before => After,
            After => Before,
            other => *other,
        };
        assert_eq!(b.compare(&a), back, "{b:?} vs {a:?}");
        assert_eq!(
            a.dominates(&b),
            matches!(want, Equal | After),
            "{a:?} >= {b:?}"
        );
    }
}

#[test]
fn covers_table() {
    let v = vv(&[(1, 3), (2, 1)]);
    let cases = [
        (dot(1, 1), true),
        (dot(1, 3), true),
        (dot(1, 4), false),
        (dot(2, 1), true),
        (dot(2, 2), false),
        (dot(3, 1), false),
    ];
    for (d, want) in cases {
        assert_eq!(v.covers(&d), want, "{d}");
    }
    assert!(!VersionVector::new().covers(&dot(1, 1)));
}

#[test]
fn add_and_merge_take_the_maximum() {
    let mut v = vv(&[(1, 3)]);
    v.add(&dot(1, 2));
    assert_eq!(v.get(&n(1)), 3);
    v.add(&dot(2, 5));
    v.merge(&vv(&[(1, 4), (3, 1)]));
    assert_eq!(v, vv(&[(1, 4), (2, 5), (3, 1)]));
    assert_eq!(v.len(), 3);
    assert!(!v.is_empty());
}

#[test]
fn prune_drops_smallest_counters_and_spares_kept_actors() {
    let mut v = vv(&[(1, 5), (2, 1), (3, 1), (4, 9)]);
    // Ties on counter 1 go to the smaller actor id first.
    assert_eq!(v.prune(3, |_| false), 1);
    assert_eq!(v, vv(&[(1, 5), (3, 1), (4, 9)]));
    // Actor 3 is kept, so actor 1 goes instead.
    assert_eq!(v.prune(2, |a| *a == n(3)), 5);
    assert_eq!(v, vv(&[(3, 1), (4, 9)]));
    // More kept actors than the bound: they all stay.
    assert_eq!(v.prune(0, |_| true), 0);
    assert_eq!(v.len(), 2);
    assert_eq!(v.prune(5, |_| false), 0);
}

// Scenario 1.
#[test]
fn concurrent_blind_writes_become_siblings() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("x"));
    let mut b = Versioned::empty();
    b.write(n(2), &VersionVector::new(), val("y"));
    let m = merged(&a, &b);
    assert_eq!(values(&m), ["x", "y"]);
    assert_eq!(m.context(), &vv(&[(1, 1), (2, 1)]));
    assert_eq!(m, merged(&b, &a));

    // Through the same coordinator as well: no write is lost to another at the same node.
    let mut one = Versioned::empty();
    one.write(n(1), &VersionVector::new(), val("x"));
    one.write(n(1), &VersionVector::new(), val("y"));
    assert_eq!(values(&one), ["x", "y"]);
}

// Scenario 2.
#[test]
fn a_write_with_the_read_context_replaces_what_was_read() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("x"));
    let mut b = Versioned::empty();
    b.write(n(2), &VersionVector::new(), val("y"));
    let read = merged(&a, &b);
    let ctx = read.context().clone();
    let d = b.write(n(2), &ctx, val("xy"));
    assert_eq!(d, dot(2, 2));
    assert_eq!(values(&b), ["xy"]);
    // Replica a still holds "x"; syncing either way drops it, since b's context covers it.
    assert_eq!(values(&merged(&a, &b)), ["xy"]);
    assert_eq!(values(&merged(&b, &a)), ["xy"]);
}

// Scenario 3.
#[test]
fn a_stale_replica_cannot_resurrect_a_deleted_key() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("v1"));
    let mut b = a.clone(); // replicated to b
    let ctx = a.context().clone();
    a.write(n(1), &ctx, None);
    assert!(a.is_deleted());
    assert_eq!(a.siblings().len(), 1, "the tombstone stays");
    let (mut a2, mut b2) = (a.clone(), b.clone());
    b2.merge(&a);
    a2.merge(&b);
    assert!(a2.is_deleted() && b2.is_deleted());
    assert_eq!(a2, b2);
    // And a write concurrent with the delete is kept beside the tombstone.
    b.write(n(2), &ctx, val("v2"));
    a2.merge(&b);
    assert!(!a2.is_deleted());
    assert_eq!(values(&a2), ["v2"]);
    assert_eq!(a2.siblings().len(), 2);
}

// Scenario 4. What we see: a client that writes back the context of its last reply keeps one
// sibling forever; two such clients interleaving keep at most two (each write replaces what
// its writer was shown, and only the other's latest write is concurrent). A client that
// writes blind (empty context) adds one sibling per write, n writes n siblings: a blind write
// has seen nothing, so it may replace nothing. That growth is real concurrency, and the
// sibling bound is what stops it. What dots prevent is the false kind: with per-client
// vectors (Riak before 2.0) the interleaving pair also grew without bound.
#[test]
fn dots_stop_sibling_explosion_but_blind_writes_add_one_each() {
    let mut s = Versioned::empty();
    let mut ctx = VersionVector::new();
    for i in 0..10 {
        s.write(n(1), &ctx, Some(vec![i]));
        ctx = s.context().clone(); // the reply carries the written state
        assert_eq!(s.siblings().len(), 1);
    }

    let mut s = Versioned::empty();
    let (mut cx, mut cy) = (VersionVector::new(), VersionVector::new());
    for i in 0..10 {
        s.write(n(1), &cx, Some(vec![0, i]));
        cx = s.context().clone();
        s.write(n(1), &cy, Some(vec![1, i]));
        cy = s.context().clone();
        assert!(s.siblings().len() <= 2, "{i}: {:?}", s.siblings());
    }

    let mut s = Versioned::empty();
    for i in 0..10u8 {
        let d = s.write(n(1), &VersionVector::new(), Some(vec![i]));
        assert_eq!(d, dot(1, u64::from(i) + 1));
        assert_eq!(s.siblings().len(), usize::from(i) + 1);
    }
}

// Scenario 5.
#[test]
fn a_write_applied_by_two_owners_merges_into_one_version() {
    let id = WriteId {
        coordinator: n(9),
        incarnation: 1,
        seq: 1,
    };
    // The first owner applied it and failed before answering; the retry went elsewhere.
    let (mut a, mut b) = (Versioned::empty(), Versioned::empty());
    let da = a.write(n(1), &VersionVector::new(), Some(b"x".to_vec()));
    a.record_applied(id, da);
    let db = b.write(n(2), &VersionVector::new(), Some(b"x".to_vec()));
    b.record_applied(id, db);
    let (ab, ba) = (merged(&a, &b), merged(&b, &a));
    assert_eq!(ab, ba, "merging commutes");
    assert_eq!(ab.values(), vec![b"x".as_slice()], "one version, not two");
    assert_eq!(ab.applied_dot(&id), Some(da.min(db)));
    assert!(ab.context().covers(&da) && ab.context().covers(&db));
}

#[test]
fn a_write_that_saw_one_form_of_a_duplicate_replaces_both() {
    let id = WriteId {
        coordinator: n(9),
        incarnation: 1,
        seq: 1,
    };
    // Applied by owner 1 (the smaller dot), then retried at owner 2.
    let (mut a, mut b) = (Versioned::empty(), Versioned::empty());
    let da = a.write(n(1), &VersionVector::new(), Some(b"old".to_vec()));
    a.record_applied(id, da);
    let db = b.write(n(2), &VersionVector::new(), Some(b"old".to_vec()));
    b.record_applied(id, db);
    assert!(da < db);
    // A client reads it from owner 2 and replaces it there: its context covers `db` only.
    let ctx = b.context().clone();
    b.write(n(2), &ctx, Some(b"new".to_vec()));
    for (x, y) in [(&a, &b), (&b, &a)] {
        assert_eq!(
            values(&merged(x, y)),
            ["new"],
            "the replaced value came back"
        );
    }
    // Same through a state that merged both forms first, whichever side wrote.
    let mut c = merged(&Versioned::empty(), &a);
    c.merge(&{
        let mut fresh = Versioned::empty();
        let d = fresh.write(n(2), &VersionVector::new(), Some(b"old".to_vec()));
        fresh.record_applied(id, d);
        fresh
    });
    assert_eq!(values(&c), ["old"], "one version of the duplicate");
    let ctx = c.context().clone();
    c.write(n(3), &ctx, Some(b"newer".to_vec()));
    assert_eq!(values(&merged(&c, &a)), ["newer"]);
    assert_eq!(values(&merged(&a, &c)), ["newer"]);
}

#[test]
fn a_write_applied_at_more_owners_than_its_forms_fit_is_not_lost() {
    let id = WriteId {
        coordinator: n(9),
        incarnation: 1,
        seq: 1,
    };
    // Retried at five owners: five dots, one more than a state remembers.
    let states: Vec<Versioned> = (1..=5)
        .map(|owner| {
            let mut s = Versioned::empty();
            let d = s.write(n(owner), &VersionVector::new(), Some(b"x".to_vec()));
            s.record_applied(id, d);
            s
        })
        .collect();
    let mut all = Versioned::empty();
    for s in &states {
        all.merge(s);
    }
    assert_eq!(values(&all), ["x"], "one version");
    // Each owner's state meets the merged one again, in both directions: still there.
    for s in &states {
        assert_eq!(values(&merged(&all, s)), ["x"]);
        assert_eq!(values(&merged(s, &all)), ["x"]);
    }
}

#[test]
fn applied_write_ids_survive_merges_and_are_bounded_per_actor() {
    let id = |c: u8, seq: u64| WriteId {
        coordinator: n(c),
        incarnation: 7,
        seq,
    };
    let mut a = Versioned::empty();
    let d = a.write(n(1), &VersionVector::new(), Some(b"x".to_vec()));
    a.record_applied(id(9, 1), d);
    // A replica that merged the state knows the write was applied, and as which dot.
    let mut b = Versioned::empty();
    b.merge(&a);
    assert_eq!(b.applied_dot(&id(9, 1)), Some(d));
    // Even once a later write replaced the value.
    let ctx = b.context().clone();
    b.write(n(2), &ctx, Some(b"y".to_vec()));
    assert_eq!(b.applied_dot(&id(9, 1)), Some(d));
    // A busy actor keeps only its newest ids, and cannot push out another actor's.
    for seq in 2..20 {
        let ctx = b.context().clone();
        let d = b.write(n(2), &ctx, Some(vec![seq as u8]));
        b.record_applied(id(8, seq), d);
    }
    let of_actor_2 = (2..20)
        .filter(|&s| b.applied_dot(&id(8, s)).is_some())
        .count();
    assert_eq!(of_actor_2, APPLIED_PER_COORDINATOR);
    assert!(b.applied_dot(&id(8, 19)).is_some(), "the newest is kept");
    assert_eq!(b.applied_dot(&id(9, 1)), Some(d), "actor 1's id survives");
    // Trimming commutes with merging.
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, ba);
}

#[test]
fn merging_identical_states_is_a_no_op() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("x"));
    a.write(n(2), &VersionVector::new(), None);
    let before = a.clone();
    a.merge(&before);
    assert_eq!(a, before);
    assert_eq!(a.digest(), before.digest());
    let mut e = Versioned::empty();
    e.merge(&Versioned::empty());
    assert_eq!(e, Versioned::empty());
}

#[test]
fn write_checked_warns_refuses_and_resolves() {
    let limits = VersionLimits {
        warn_siblings: 2,
        max_siblings: 3,
        ..VersionLimits::default()
    };
    let mut s = Versioned::empty();
    let blind = VersionVector::new();
    let w1 = s.write_checked(n(1), &blind, val("a"), &limits).unwrap();
    assert!(!w1.warn);
    s.write_checked(n(1), &blind, val("b"), &limits).unwrap();
    let w3 = s.write_checked(n(1), &blind, val("c"), &limits).unwrap();
    assert!(w3.warn);
    assert_eq!(w3.siblings, 3);
    let before = s.clone();
    let err = s
        .write_checked(n(1), &blind, val("d"), &limits)
        .unwrap_err();
    assert_eq!(
        err,
        Error::InvalidInput(
            "key has 3 siblings, the limit is 3: read it and write back with its context to \
             resolve them"
                .into()
        )
    );
    assert_eq!(s, before, "a refused write changes nothing");
    // Writing back with the context resolves them, however many there are.
    let ctx = s.context().clone();
    let w = s.write_checked(n(1), &ctx, val("abc"), &limits).unwrap();
    assert_eq!((w.siblings, w.warn), (1, false));
    assert_eq!(values(&s), ["abc"]);
}

#[test]
fn write_checked_refuses_a_forged_counter() {
    let mut s = Versioned::empty();
    let forged = vv(&[(1, u64::MAX)]);
    let err = s.write_checked(n(1), &forged, val("x"), &VersionLimits::default());
    assert!(matches!(err, Err(Error::InvalidInput(_))), "{err:?}");
    assert_eq!(s, Versioned::empty());
}

#[test]
fn write_checked_prunes_the_context() {
    let limits = VersionLimits {
        max_clock_entries: 2,
        ..VersionLimits::default()
    };
    let mut s = Versioned::empty();
    // Four coordinators in turn, each resolving what came before.
    for a in 1..=4 {
        let ctx = s.context().clone();
        let out = s.write_checked(n(a), &ctx, val("x"), &limits).unwrap();
        assert!(s.context().len() <= 2);
        assert_eq!(out.siblings, 1);
    }
    assert_eq!(s.context().len(), 2);
    s.validate().unwrap();
}

/// The claim in PRUNING, on the smallest example: pruning turns a replaced version into a
/// spurious sibling, and loses nothing.
#[test]
fn pruning_makes_spurious_siblings_not_lost_writes() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("old"));
    let mut b = a.clone();
    let ctx = b.context().clone();
    b.write(n(2), &ctx, val("new"));
    let mut unpruned = b.clone();
    assert_eq!(
        b.prune(1),
        1,
        "actor 1 owns no sibling at b, so its entry goes"
    );
    assert_eq!(b.context(), &vv(&[(2, 1)]));
    b.merge(&a);
    unpruned.merge(&a);
    assert_eq!(values(&unpruned), ["new"]);
    assert_eq!(
        values(&b),
        ["old", "new"],
        "spurious sibling: 'old' is back"
    );
    b.validate().unwrap();
}

/// Without the pruning floor, actor 1 would number its next write 1 again, a dot replica `c`
/// already covers, and `c` would drop that write on merge.
#[test]
fn a_pruned_actor_never_reuses_a_counter() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("old"));
    let ctx = a.context().clone();
    a.write(n(2), &ctx, val("new")); // replaces "old"; a's entry for actor 1 is now idle
    let c = a.clone();
    a.prune(1);
    assert_eq!(a.context().get(&n(1)), 0);
    let d = a.write(n(1), &VersionVector::new(), val("blind"));
    assert!(!c.context().covers(&d), "fresh dot {d}");
    assert_eq!(values(&merged(&c, &a)), ["blind", "new"]);
    assert_eq!(values(&merged(&a, &c)), ["blind", "new"]);
}

/// Two siblings that share a dot (a coordinator that lost its disk) are both kept.
#[test]
fn colliding_dots_are_kept_not_dropped() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("first"));
    let mut b = Versioned::empty(); // n(1) after losing its state
    b.write(n(1), &VersionVector::new(), val("second"));
    let m = merged(&a, &b);
    assert_eq!(values(&m), ["first", "second"]);
    assert_eq!(m, merged(&b, &a));
    m.validate().unwrap();
}

#[test]
fn encode_decode_round_trip_and_validation() {
    let mut s = Versioned::empty();
    s.write(n(1), &VersionVector::new(), val("x"));
    s.write(n(2), &VersionVector::new(), None);
    s.prune(1);
    assert_eq!(Versioned::decode(&s.encode()).unwrap(), s);
    assert_eq!(
        Versioned::decode(&Versioned::empty().encode()).unwrap(),
        Versioned::empty()
    );

    let mut trailing = s.encode();
    trailing.push(0);
    assert!(matches!(
        Versioned::decode(&trailing),
        Err(Error::InvalidData(_))
    ));
    assert!(matches!(
        Versioned::decode(&[0xff, 0xff]),
        Err(Error::InvalidData(_))
    ));

    // Hand-built states that break an invariant are refused.
    let bad = [
        Versioned {
            context: VersionVector::new(),
            siblings: vec![Sibling {
                dot: dot(1, 1),
                value: None,
                deps: None,
            }],
            pruned: 0,
            applied: BTreeMap::new(),
        },
        Versioned {
            context: vv(&[(1, 2)]),
            siblings: vec![
                Sibling {
                    dot: dot(1, 2),
                    value: None,
                    deps: None,
                },
                Sibling {
                    dot: dot(1, 1),
                    value: None,
                    deps: None,
                },
            ],
            pruned: 0,
            applied: BTreeMap::new(),
        },
        Versioned {
            context: vv(&[(1, 2)]),
            siblings: vec![Sibling {
                dot: dot(1, 0),
                value: None,
                deps: None,
            }],
            pruned: 0,
            applied: BTreeMap::new(),
        },
    ];
    for b in bad {
        let err = Versioned::decode(&b.encode());
        assert!(matches!(err, Err(Error::InvalidData(_))), "{b:?}: {err:?}");
    }
}

/// Anti-entropy compares digests across nodes and releases, so the digest of a fixed state
/// is pinned here: a change to the encoding must change this test on purpose.
#[test]
fn digest_is_stable_and_follows_equality() {
    let mut a = Versioned::empty();
    a.write(n(1), &VersionVector::new(), val("x"));
    let mut b = Versioned::empty();
    b.write(n(2), &VersionVector::new(), val("y"));
    assert_eq!(merged(&a, &b).digest(), merged(&b, &a).digest());
    assert_ne!(a.digest(), b.digest());
    assert_ne!(a.digest(), Versioned::empty().digest());
    assert_eq!(merged(&a, &b).digest(), 0x71a3_64b8_925a_69ef);
}

#[test]
fn context_tokens_round_trip_and_refuse_garbage() {
    for c in [VersionVector::new(), vv(&[(1, 3), (200, u64::MAX)])] {
        let ctx = Context::from(c.clone());
        let token = ctx.to_token();
        assert!(token.chars().all(|ch| ch.is_ascii_hexdigit()), "{token}");
        assert_eq!(Context::from_token(&token).unwrap().vector(), &c);
    }
    let good = Context::from(vv(&[(1, 3)])).to_token();
    let too_long = "0".repeat(Context::MAX_TOKEN_LEN + 2);
    for garbage in [
        "",
        "zz",
        "abc",
        &good[..good.len() - 2],
        &format!("{good}00"),
        &too_long,
    ] {
        let err = Context::from_token(garbage);
        assert!(
            matches!(err, Err(Error::InvalidInput(_))),
            "{garbage:.20}: {err:?}"
        );
    }
}

// ---- Property tests on random histories across three replicas. ----

const REPLICAS: usize = 3;
const CLIENTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A client reads a replica and keeps its context.
    Read { replica: usize, client: usize },
    /// A client writes through a replica with the context it holds; `keep_reply` means it
    /// then holds the written state's context (the reply carried the state).
    Write {
        replica: usize,
        client: usize,
        delete: bool,
        keep_reply: bool,
    },
    /// A client forgets its context: its next write is blind.
    Forget { client: usize },
    /// Replica `to` merges replica `from`'s state.
    Sync { from: usize, to: usize },
    /// In a pruning run, a replica prunes its context between writes (as a compaction
    /// might), which can drop the replica's own actor's entry.
    Prune { replica: usize },
    /// The write `write` (modulo the writes so far) is retried at `replica`, as a coordinator
    /// does when the first owner did not answer: same write id, context and value, applied
    /// unless the replica's state already names the write id, and only while no later write
    /// has replaced it.
    Retry { replica: usize, write: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..REPLICAS, 0..CLIENTS).prop_map(|(replica, client)| Op::Read { replica, client }),
        (
            0..REPLICAS,
            0..CLIENTS,
            prop::bool::weighted(0.2),
            any::<bool>()
        )
            .prop_map(|(replica, client, delete, keep_reply)| Op::Write {
                replica,
                client,
                delete,
                keep_reply
            }),
        (0..CLIENTS).prop_map(|client| Op::Forget { client }),
        (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        (0..REPLICAS).prop_map(|replica| Op::Prune { replica }),
    ]
}

/// [`op`]s and retries of earlier writes at other replicas.
fn op_or_retry() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => op(),
        1 => (0..REPLICAS, 0..64usize).prop_map(|(replica, write)| Op::Retry { replica, write }),
    ]
}

/// One write as issued: its dot, its context and its value; `retried`, the dots its retries
/// got at other replicas (the same write, one version).
#[derive(Debug, Clone)]
struct Issued {
    dot: Dot,
    ctx: VersionVector,
    value: Option<Vec<u8>>,
    /// The write id its coordinator gave it (one coordinator per client).
    id: WriteId,
    retried: Vec<Dot>,
}

impl Issued {
    /// The write's dots: its first application's and its retries'.
    fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        std::iter::once(self.dot).chain(self.retried.iter().copied())
    }
}

/// The write id of write `seq` of `client` in a [`run`]: each client's writes go through a
/// coordinator of their own.
fn write_id(client: usize, seq: usize) -> WriteId {
    WriteId {
        coordinator: n(100 + client as u8),
        incarnation: 1,
        seq: seq as u64,
    }
}

/// How a run prunes: to `bound` entries, at explicit `Op::Prune`s and, if `on_write`, after
/// every write too.
#[derive(Debug, Clone, Copy)]
struct Pruning {
    bound: usize,
    on_write: bool,
}

/// A run of `ops`: the replicas after each op, and the writes issued. Without `pruning`,
/// nothing is pruned.
struct Run {
    states: Vec<[Versioned; REPLICAS]>,
    writes: Vec<Issued>,
}

fn run(ops: &[Op], pruning: Option<Pruning>) -> Run {
    let limits = VersionLimits {
        warn_siblings: usize::MAX,
        max_siblings: usize::MAX,
        max_state_bytes: usize::MAX,
        max_clock_entries: match pruning {
            Some(p) if p.on_write => p.bound,
            _ => usize::MAX,
        },
    };
    let mut replicas: [Versioned; REPLICAS] = Default::default();
    let mut clients: [VersionVector; CLIENTS] = Default::default();
    let mut states = Vec::new();
    let mut writes = Vec::new();
    for op in ops {
        match *op {
            Op::Read { replica, client } => {
                clients[client] = replicas[replica].context().clone();
            }
            Op::Write {
                replica,
                client,
                delete,
                keep_reply,
            } => {
                let ctx = clients[client].clone();
                // Each value names its write, so values are unique.
                let value = (!delete).then(|| (writes.len() as u64).to_be_bytes().to_vec());
                let out = replicas[replica]
                    .write_checked(n(replica as u8 + 1), &ctx, value.clone(), &limits)
                    .unwrap();
                let id = write_id(client, writes.len());
                replicas[replica].record_applied(id, out.dot);
                writes.push(Issued {
                    dot: out.dot,
                    ctx,
                    value,
                    id,
                    retried: Vec::new(),
                });
                if keep_reply {
                    clients[client] = replicas[replica].context().clone();
                }
            }
            Op::Forget { client } => clients[client] = VersionVector::new(),
            Op::Sync { from, to } => {
                let other = replicas[from].clone();
                replicas[to].merge(&other);
            }
            Op::Prune { replica } => {
                if let Some(p) = pruning {
                    replicas[replica].prune(p.bound);
                }
            }
            Op::Retry { replica, write } => {
                if !writes.is_empty() {
                    let i = write % writes.len();
                    // A coordinator retries while the client waits for the first answer: before
                    // the write has been replaced (a retry after that is a new concurrent write).
                    let replaced = writes[i + 1..]
                        .iter()
                        .any(|l| writes[i].dots().any(|d| l.ctx.covers(&d)));
                    let state = &mut replicas[replica];
                    if !replaced && state.applied_dot(&writes[i].id).is_none() {
                        let w: &mut Issued = &mut writes[i];
                        let out = state
                            .write_checked(n(replica as u8 + 1), &w.ctx, w.value.clone(), &limits)
                            .unwrap();
                        state.record_applied(w.id, out.dot);
                        w.retried.push(out.dot);
                    }
                }
            }
        }
        states.push(replicas.clone());
    }
    Run { states, writes }
}

/// Every replica merged into one.
fn converge(replicas: &[Versioned]) -> Versioned {
    let mut all = Versioned::empty();
    for r in replicas {
        all.merge(r);
    }
    all
}

/// The writes that are siblings in `state`, by index.
fn surviving(state: &Versioned, writes: &[Issued]) -> BTreeSet<usize> {
    writes
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            state
                .siblings()
                .iter()
                .any(|s| s.dot == w.dot && s.value == w.value)
        })
        .map(|(i, _)| i)
        .collect()
}

/// No write is lost: each is a surviving sibling of the converged state, or a later write
/// was issued with a context covering its dot (and so replaced it knowingly). Also asks the
/// history checker, which must agree, with the replies of the writes `lost_reply` picks
/// recorded as lost (the writes took effect, unacknowledged), under `rule`.
fn check_no_write_lost(
    r: &Run,
    lost_reply: &[bool],
    rule: history::Supersession,
) -> std::result::Result<(), TestCaseError> {
    let Some(last) = r.states.last() else {
        return Ok(());
    };
    let all = converge(last);
    let survivors = surviving(&all, &r.writes);
    let mut history = History::new();
    for (i, w) in r.writes.iter().enumerate() {
        let replaced = r.writes[i + 1..].iter().any(|l| l.ctx.covers(&w.dot));
        prop_assert!(
            survivors.contains(&i) || replaced,
            "write {} ({}) lost: {:?}",
            i,
            w.dot,
            all
        );
        let id = history.record_write(b"k", w.value.clone(), w.ctx.clone());
        if !lost_reply.get(i).copied().unwrap_or(false) {
            history.record_ack(id, w.dot);
        }
    }
    history.record_final_state(b"k", &all);
    let violations = history::check_with(&history, rule);
    prop_assert!(violations.is_empty(), "{:?}", violations);
    Ok(())
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let r = run(&ops, None);
        let mid = r.states.get(ops.len() / 2).cloned().unwrap_or_default();
        let last = r.states.last().cloned().unwrap_or_default();
        let pool: Vec<&Versioned> = mid.iter().chain(last.iter()).collect();
        for a in &pool {
            prop_assert_eq!(merged(a, a), (*a).clone());
            for b in &pool {
                let ab = merged(a, b);
                prop_assert_eq!(&ab, &merged(b, a));
                prop_assert_eq!(ab.digest(), merged(b, a).digest());
                ab.validate().map_err(TestCaseError::fail)?;
                for c in &pool {
                    prop_assert_eq!(merged(&ab, c), merged(a, &merged(b, c)));
                }
            }
        }
    }

    /// A write applied twice (a retry at another owner) is one version: merging stays
    /// commutative, associative and idempotent; in the converged state it survives under at
    /// most one dot; it is gone exactly when a later write's context covered either of its
    /// dots (knowingly replaced), and otherwise survives.
    #[test]
    fn a_write_applied_twice_is_one_version(
        ops in proptest::collection::vec(op_or_retry(), 0..50),
    ) {
        let r = run(&ops, None);
        let last = r.states.last().cloned().unwrap_or_default();
        // A duplicate is recognised only while the states remember its write id (each keeps
        // the newest few per coordinator): once an id may be trimmed, a write can keep both
        // forms, or merges can judge them apart, but it is never lost.
        let mut per_coordinator: BTreeMap<Id, usize> = BTreeMap::new();
        for w in &r.writes {
            *per_coordinator.entry(w.id.coordinator).or_default() += 1;
        }
        let remembered = per_coordinator.values().all(|&k| k <= APPLIED_PER_COORDINATOR);
        for a in last.iter().filter(|_| remembered) {
            prop_assert_eq!(merged(a, a), a.clone(), "idempotent");
            for b in &last {
                let ab = merged(a, b);
                prop_assert_eq!(&ab, &merged(b, a), "commutative");
                for c in &last {
                    prop_assert_eq!(merged(&ab, c), merged(a, &merged(b, c)), "associative");
                }
            }
        }
        let all = converge(&last);
        for (i, w) in r.writes.iter().enumerate() {
            let alive = all
                .siblings()
                .iter()
                .filter(|s| w.dots().any(|d| d == s.dot))
                .count();
            let replaced = r.writes[i + 1..]
                .iter()
                .any(|l| w.dots().any(|d| l.ctx.covers(&d)));
            prop_assert!(alive > 0 || replaced, "write {} lost: {:?}", i, all);
            if remembered {
                prop_assert!(alive <= 1, "write {} survives as {} versions: {:?}", i, alive, all);
                prop_assert_eq!(
                    alive == 0,
                    replaced,
                    "write {} ({:?}, retried as {:?}): replaced {}, alive {}: {:?}",
                    i, w.dot, w.retried, replaced, alive, all
                );
            }
        }
    }

    #[test]
    fn no_write_is_lost_and_replicas_converge(
        ops in proptest::collection::vec(op(), 0..60),
        lost_reply in proptest::collection::vec(prop::bool::weighted(0.3), 60),
    ) {
        let r = run(&ops, None);
        for states in &r.states {
            for s in states {
                s.validate().map_err(TestCaseError::fail)?;
                prop_assert_eq!(&Versioned::decode(&s.encode()).unwrap(), s);
            }
        }
        check_no_write_lost(&r, &lost_reply, history::Supersession::Observed)?;
        if let Some(last) = r.states.last() {
            // Sync in two different orders: the same state either way.
            let forward = converge(last);
            let mut backward = Versioned::empty();
            for s in last.iter().rev() {
                backward.merge(s);
            }
            prop_assert_eq!(forward.digest(), backward.digest());
            prop_assert_eq!(forward, backward);
        }
    }

    /// PRUNING's claim, on random histories: with contexts pruned to one or two entries, no
    /// write is lost, and every replica holds at least the writes it would hold unpruned,
    /// after every step (pruning only adds spurious siblings).
    #[test]
    fn pruning_only_adds_siblings(
        ops in proptest::collection::vec(op(), 0..60),
        bound in 1usize..=2,
        on_write in any::<bool>(),
        lost_reply in proptest::collection::vec(prop::bool::weighted(0.3), 60),
    ) {
        let plain = run(&ops, None);
        let pruned = run(&ops, Some(Pruning { bound, on_write }));
        for (step, (p, q)) in plain.states.iter().zip(&pruned.states).enumerate() {
            for (i, (p, q)) in p.iter().zip(q).enumerate() {
                q.validate().map_err(TestCaseError::fail)?;
                let want = surviving(p, &plain.writes);
                let got = surviving(q, &pruned.writes);
                prop_assert!(
                    got.is_superset(&want),
                    "step {} replica {}: unpruned {:?}, pruned {:?}",
                    step, i, want, got
                );
            }
        }
        // Pruned contexts are not transitive, and pruning may bring a replaced value back as a
        // spurious sibling, so only the rule that trusts every unacknowledged write and does
        // not judge resurrection is sound here (see the history module's ASSUMPTIONS).
        check_no_write_lost(&pruned, &lost_reply, history::Supersession::Any)?;
        check_no_write_lost(&pruned, &[], history::Supersession::Any)?;
    }
}

// ---------------------------------------------------------------- forged versions

/// A node, actor 1, that has issued counters up to 10.
fn issuer() -> Issuer {
    Issuer {
        actor: n(1),
        issued: 10,
    }
}

#[test]
fn a_write_numbers_its_dot_from_what_the_issuer_issued_not_from_the_state() {
    let limits = VersionLimits::default();
    let mut s = Versioned::empty();
    // A floor a peer's state carries (its pruning floor) does not move our counter.
    s.raise_dot_floor(1 << 40);
    let out = s
        .write_issued(
            &issuer(),
            &VersionVector::new(),
            &[],
            val("a"),
            None,
            &limits,
        )
        .unwrap();
    assert_eq!(out.dot, dot(1, 11));
    // Never below the state's own entry of ours either, even if the issuer lagged it.
    let out = s
        .write_issued(
            &issuer(),
            &VersionVector::new(),
            &[],
            val("b"),
            None,
            &limits,
        )
        .unwrap();
    assert_eq!(out.dot, dot(1, 12));
}

#[test]
fn a_context_claiming_the_issuers_counter_beyond_what_it_issued_is_refused() {
    let limits = VersionLimits::default();
    let mut s = Versioned::empty();
    // The issuer's first dot is 11 (it issued up to 10 before), which it then records.
    let out = s
        .write_issued(
            &issuer(),
            &VersionVector::new(),
            &[],
            val("a"),
            None,
            &limits,
        )
        .unwrap();
    let me = Issuer {
        issued: out.dot.counter,
        ..issuer()
    };
    let before = s.clone();
    for claimed in [12, 1 << 48, u64::MAX - 1, u64::MAX] {
        let ctx = vv(&[(1, claimed)]);
        let err = s
            .write_issued(&me, &ctx, &[], val("x"), None, &limits)
            .unwrap_err();
        let Error::InvalidInput(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains(&format!("{}:{claimed}", n(1).short()))
                && msg.contains("up to 11")
                && msg.contains("forged"),
            "{msg}"
        );
        assert_eq!(s, before, "a refused write changed the state");
    }
    // Up to what it issued is fine.
    let out = s
        .write_issued(&me, &vv(&[(1, 11)]), &[], val("b"), None, &limits)
        .unwrap();
    assert_eq!(values(&s), ["b"]);
    assert_eq!(out.dot.counter, 12);
}

#[test]
fn a_context_naming_another_actor_above_the_ceiling_is_refused() {
    let limits = VersionLimits::default();
    let mut s = Versioned::empty();
    for claimed in [MAX_COUNTER + 1, u64::MAX - 1] {
        let ctx = vv(&[(2, claimed)]);
        let err = s
            .write_issued(&issuer(), &ctx, &[], val("x"), None, &limits)
            .unwrap_err();
        let Error::InvalidInput(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(
            msg.contains(&format!("{}:{claimed}", n(2).short())) && msg.contains("forged"),
            "{msg}"
        );
        assert_eq!(s, Versioned::empty());
    }
    // At the ceiling, another actor's entry is taken as it is: its node numbers its own dots.
    let ctx = vv(&[(2, MAX_COUNTER)]);
    let out = s
        .write_issued(&issuer(), &ctx, &[], val("y"), None, &limits)
        .unwrap();
    assert_eq!(out.dot, dot(1, 11));
}

#[test]
fn the_issuer_never_issues_past_the_ceiling() {
    let limits = VersionLimits::default();
    let mut s = Versioned::empty();
    let spent = Issuer {
        actor: n(1),
        issued: MAX_COUNTER,
    };
    let err = s
        .write_issued(&spent, &VersionVector::new(), &[], val("x"), None, &limits)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("exhausted")),
        "{err:?}"
    );
}

#[test]
fn a_peers_state_is_disowned_of_our_dots_beyond_what_we_issued() {
    let me = issuer();
    // A peer's state: an honest version of actor 2 and one of ours we never issued, with the
    // context to match.
    let mut peer = Versioned::empty();
    peer.write(n(2), &VersionVector::new(), val("theirs"));
    let mut forged = Versioned::empty();
    forged.raise_dot_floor(u64::MAX - 2);
    forged.write(n(1), &VersionVector::new(), val("forged"));
    peer.merge(&forged);
    assert_eq!(peer.unissued(&me), Some(u64::MAX - 1));

    let mut adopted = peer.clone();
    assert_eq!(adopted.disown_unissued(&me), Some(u64::MAX - 1));
    assert_eq!(values(&adopted), ["theirs"]);
    assert_eq!(adopted.context().get(&n(1)), 10, "capped at what we issued");
    assert_eq!(adopted.unissued(&me), None);
    // Still a valid state, and disowning again changes nothing.
    assert_eq!(Versioned::decode(&adopted.encode()).unwrap(), adopted);
    let again = adopted.clone();
    assert_eq!(adopted.disown_unissued(&me), None);
    assert_eq!(adopted, again);

    // A state that claims only what we issued is left alone.
    let mut honest = Versioned::empty();
    honest.raise_dot_floor(4);
    honest.write(n(1), &VersionVector::new(), val("ours"));
    honest.write(n(2), &vv(&[(1, 10)]), val("fine"));
    let before = honest.clone();
    assert_eq!(honest.unissued(&me), None);
    assert_eq!(honest.disown_unissued(&me), None);
    assert_eq!(honest, before);
}

#[test]
fn an_applied_write_record_with_an_unissued_dot_is_disowned() {
    let me = issuer();
    let mut peer = Versioned::empty();
    let d = peer.write(n(2), &VersionVector::new(), val("v"));
    let id = WriteId {
        coordinator: n(2),
        incarnation: 1,
        seq: 1,
    };
    peer.record_applied(id, Dot::new(n(1), 1 << 50));
    assert_eq!(peer.unissued(&me), Some(1 << 50));
    peer.disown_unissued(&me);
    assert_eq!(peer.applied_dot(&id), None);
    assert_eq!(peer.dots().collect::<Vec<_>>(), [d]);
}

/// A state whose sibling list announces `count` siblings, with none present: context empty,
/// then the list's length as a varint u64 (tag 253 and 8 bytes).
fn state_announcing_siblings(count: u64) -> Vec<u8> {
    let mut bytes = vec![0, 253];
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes
}

#[test]
fn a_state_announcing_more_siblings_than_its_bound_is_refused_from_the_length() {
    // Refused for the length, before a sibling is decoded (none is there to decode).
    let over = state_announcing_siblings(MAX_SIBLINGS as u64 + 1);
    let err = Versioned::decode(&over).unwrap_err().to_string();
    assert!(err.contains("at most 65536"), "{err}");
    let within = state_announcing_siblings(MAX_SIBLINGS as u64);
    let err = Versioned::decode(&within).unwrap_err().to_string();
    assert!(!err.contains("at most"), "{err}");
    // Four billion announced: the same, at once.
    let huge = state_announcing_siblings(u64::from(u32::MAX));
    assert!(matches!(
        Versioned::decode(&huge),
        Err(Error::InvalidData(_))
    ));
}

#[test]
fn version_vectors_decode_up_to_their_bound() {
    let at: VersionVector = (0..MAX_VECTOR_ENTRIES as u32)
        .map(|i| {
            let mut id = [0u8; 20];
            id[..4].copy_from_slice(&i.to_be_bytes());
            (Id(id), 1)
        })
        .collect();
    let bytes = bincode::serde::encode_to_vec(&at, bincode::config::standard()).unwrap();
    assert_eq!(decode_exact::<VersionVector>(&bytes).unwrap(), at);
    let mut over = at.clone();
    over.add(&Dot::new(Id::MAX, 1));
    let bytes = bincode::serde::encode_to_vec(&over, bincode::config::standard()).unwrap();
    let err = decode_exact::<VersionVector>(&bytes).unwrap_err();
    assert!(err.contains("at most 4096"), "{err}");
}

/// A state of one sibling whose dependencies announce `len` bytes (and carry none).
fn state_with_deps_announcing(len: u64) -> Vec<u8> {
    // Empty context, one sibling: dot (actor of 20 bytes, counter 1), no value, deps present.
    let mut bytes = vec![0, 1];
    bytes.extend_from_slice(&[7; 20]);
    bytes.extend_from_slice(&[1, 0, 1, 253]);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

#[test]
fn fuzz_a_state_whose_deps_announce_a_terabyte_is_refused_without_allocating_it() {
    // Found by the version_state fuzz target: bincode allocated the announced length of a
    // sibling's deps (serde_bytes::ByteBuf) before reading them, and a terabyte aborted the
    // process. Now the length is checked against the input first.
    let err = Versioned::decode(&state_with_deps_announcing(1 << 40)).unwrap_err();
    assert!(matches!(err, Error::InvalidData(_)), "{err}");
    // The fuzzer's own input: a cut byte, then two states split at it.
    let input: &[u8] = &[
        98, 2, 191, 139, 69, 48, 216, 210, 70, 221, 116, 89, 91, 161, 52, 113, 187, 161, 121, 65,
        223, 247, 1, 196, 234, 33, 54, 91, 187, 190, 234, 84, 137, 62, 86, 209, 226, 184, 196, 78,
        1, 1, 191, 139, 69, 48, 216, 210, 70, 221, 116, 172, 83, 79, 52, 113, 187, 161, 121, 65,
        223, 247, 2, 0, 1, 29, 1, 5, 111, 116, 104, 101, 114, 1, 253, 255, 255, 255, 0, 10, 255, 0,
        0, 18, 96, 79, 148, 84, 20, 196, 78, 1, 249, 2, 118, 49, 52, 113, 187, 161, 121, 65, 223,
        247, 2, 0,
    ];
    let (&cut, rest) = input.split_first().unwrap();
    let (a, b) = rest.split_at(usize::from(cut));
    for state in [a, b] {
        if let Ok(v) = Versioned::decode(state) {
            assert_eq!(Versioned::decode(&v.encode()).unwrap(), v);
        }
    }
    // Deps that are there still decode.
    let mut s = Versioned::empty();
    let mut deps = Deps::new();
    deps.add(b"other", &vv(&[(3, 4)]));
    s.write_replacing(n(1), &VersionVector::new(), &[], val("v"), Some(&deps));
    assert_eq!(Versioned::decode(&s.encode()).unwrap(), s);
}
