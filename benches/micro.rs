//! Criterion micro-benchmarks of a node's hot paths: id arithmetic, one routing step
//! (closest preceding node) on a settled ring, frame encode/decode, version merge and state
//! encoding, storage get/put (sled and memory).
//!
//! `cargo bench --bench micro` (75 s on a 2-core machine, besides building);
//! `cargo bench --bench micro -- frame` runs the benchmarks whose names contain `frame`. Each
//! group measures for 2 s after 0.5 s of warmup, 30 samples; criterion prints the time per
//! iteration (its estimate with a 95% confidence interval) and keeps the last run under
//! target/criterion to compare against.

use chordkv_node::id::{self, Id};
use chordkv_node::message::{Envelope, ReadReply, Request, Response};
use chordkv_node::session::Deps;
use chordkv_node::storage::{MemoryStorage, SledStorage, Storage};
use chordkv_node::testing::sim::{Sim, SimOptions};
use chordkv_node::version::{Dot, VersionVector, Versioned};
use chordkv_node::wire::{self, Limits};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

/// Nodes in the simulated ring the routing step runs on.
const RING: usize = 1024;

fn random_ids(n: usize, seed: u64) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| Id(rng.random())).collect()
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("id");
    let key = b"bench-00012345";
    g.bench_function("hash 14-byte key", |b| b.iter(|| Id::hash(black_box(key))));
    let xs = random_ids(1024, 1);
    let mut i = 0;
    g.bench_function("add_pow2", |b| {
        b.iter(|| {
            i = (i + 1) % xs.len();
            black_box(xs[i]).add_pow2(black_box(i % id::BITS))
        })
    });
    let mut i = 0;
    g.bench_function("in_half_open", |b| {
        b.iter(|| {
            i = (i + 3) % (xs.len() - 2);
            id::in_half_open(black_box(xs[i]), black_box(xs[i + 1]), black_box(xs[i + 2]))
        })
    });
    let mut i = 0;
    g.bench_function("in_open", |b| {
        b.iter(|| {
            i = (i + 3) % (xs.len() - 2);
            id::in_open(black_box(xs[i]), black_box(xs[i + 1]), black_box(xs[i + 2]))
        })
    });
    let mut i = 0;
    g.bench_function("distance", |b| {
        b.iter(|| {
            i = (i + 2) % (xs.len() - 1);
            id::distance(black_box(xs[i]), black_box(xs[i + 1]))
        })
    });
    g.finish();
}

fn route(c: &mut Criterion) {
    // A ring whose successor lists and fingers are all exact, as in benches/hops.rs.
    let mut sim = Sim::new(SimOptions {
        seed: 42,
        ..SimOptions::default()
    });
    sim.grow_settled(RING);
    let targets = random_ids(4096, 2);
    let none = BTreeSet::new();
    let mut g = c.benchmark_group("route");
    let ring = sim.node(0).expect("node 0 is up").ring();
    let mut i = 0;
    g.bench_function(format!("Ring::route, {RING}-node ring"), |b| {
        b.iter(|| {
            i = (i + 1) % targets.len();
            ring.route(black_box(targets[i]), &none)
        })
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let max = Limits::default().max_frame;
    let key = b"bench-00012345".to_vec();
    let mut context = VersionVector::new();
    for (i, actor) in random_ids(3, 3).into_iter().enumerate() {
        context.add(&Dot::new(actor, 10 + i as u64));
    }
    let put = |n: usize| Envelope::Request {
        id: 7,
        body: Request::Put {
            key: key.clone(),
            value: vec![b'v'; n],
            context: context.clone(),
            w: None,
            session: None,
            mode: Default::default(),
        },
    };
    let cases = [
        (
            "get request",
            Envelope::Request {
                id: 7,
                body: Request::Get {
                    key: key.clone(),
                    r: None,
                    session: None,
                },
            },
        ),
        ("put request, 100 B value", put(100)),
        ("put request, 4 KiB value", put(4096)),
        (
            "read answer, 100 B value",
            Envelope::Response {
                id: 7,
                body: Ok(Response::Read(ReadReply {
                    values: vec![vec![b'v'; 100]],
                    context: context.clone(),
                    deps: Deps::default(),
                    stable: false,
                })),
            },
        ),
    ];
    let mut g = c.benchmark_group("frame");
    for (name, envelope) in &cases {
        g.bench_function(format!("encode {name}"), |b| {
            b.iter(|| wire::encode_frame(black_box(envelope), max).expect("encodes"))
        });
        let frame = wire::encode_frame(envelope, max).expect("encodes");
        g.bench_function(format!("decode {name} ({} B)", frame.len()), |b| {
            b.iter(|| wire::parse_frame(black_box(&frame), max).expect("decodes"))
        });
    }
    g.finish();
}

fn versions(c: &mut Criterion) {
    let actors = random_ids(5, 4);
    let value = |b: u8| Some(vec![b; 100]);
    let none = VersionVector::new();
    // Replica a saw three concurrent writes (three siblings). Replica b saw them too, then a
    // write that replaced the first, and two more concurrent ones: five siblings. Merged: b's
    // five (a's first is covered by b's context).
    let mut a = Versioned::empty();
    let first = a.write(actors[0], &none, value(b'a'));
    a.write(actors[1], &none, value(b'b'));
    a.write(actors[2], &none, value(b'c'));
    let mut b = a.clone();
    let mut seen = VersionVector::new();
    seen.add(&first);
    b.write(actors[0], &seen, value(b'x'));
    b.write(actors[3], &none, value(b'd'));
    b.write(actors[4], &none, value(b'e'));
    let mut merged = a.clone();
    merged.merge(&b);
    let mut g = c.benchmark_group("version");
    g.bench_function(
        format!(
            "merge {} + {} siblings -> {}",
            a.siblings().len(),
            b.siblings().len(),
            merged.siblings().len()
        ),
        |bench| {
            bench.iter_batched_ref(
                || a.clone(),
                |x| x.merge(black_box(&b)),
                BatchSize::SmallInput,
            )
        },
    );
    let bytes = merged.encode();
    g.bench_function(
        format!("encode state, {} siblings", merged.siblings().len()),
        |bench| bench.iter(|| black_box(&merged).encode()),
    );
    g.bench_function(
        format!(
            "decode state, {} siblings ({} B)",
            merged.siblings().len(),
            bytes.len()
        ),
        |bench| bench.iter(|| Versioned::decode(black_box(&bytes)).expect("decodes")),
    );
    g.finish();
}

/// Keys the storage benchmarks preload and then read and overwrite, uniformly.
const STORED: u64 = 10_000;

fn storage_on(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    engine: &str,
    s: &mut dyn Storage,
) {
    let value = vec![b'v'; 128];
    let key = |i: u64| format!("bench-{i:08}").into_bytes();
    for i in 0..STORED {
        s.put(&key(i), &value).expect("put");
    }
    let mut rng = StdRng::seed_from_u64(5);
    g.bench_function(format!("{engine} get, {STORED} keys"), |b| {
        b.iter_batched(
            || key(rng.random_range(0..STORED)),
            |k| s.get(&k).expect("get"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function(
        format!("{engine} put 128 B, overwrite of {STORED} keys"),
        |b| {
            b.iter_batched(
                || key(rng.random_range(0..STORED)),
                |k| s.put(&k, &value).expect("put"),
                BatchSize::SmallInput,
            )
        },
    );
}

fn storage(c: &mut Criterion) {
    let mut g = c.benchmark_group("storage");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sled = SledStorage::open(dir.path()).expect("open sled");
    storage_on(&mut g, "sled", &mut sled);
    storage_on(&mut g, "memory", &mut MemoryStorage::new());
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = micro;
    config = config();
    targets = ids, route, frames, versions, storage
}
criterion_main!(micro);
