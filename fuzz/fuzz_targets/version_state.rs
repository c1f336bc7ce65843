//! `Versioned::decode` over arbitrary bytes must never panic or over-allocate; what decodes
//! must encode and decode back to itself, and merging, digesting, pruning and reading two
//! decoded states must not panic either (and merging must keep the invariants decode checks).
#![no_main]

use chordkv_node::version::Versioned;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One state, or two: the first byte says where the second starts.
    let (first, second) = match data.split_first() {
        Some((&cut, rest)) if usize::from(cut) <= rest.len() => rest.split_at(usize::from(cut)),
        _ => (data, &[][..]),
    };
    let Ok(a) = Versioned::decode(first) else {
        return;
    };
    check(&a);
    let b = Versioned::decode(second).unwrap_or_else(|_| Versioned::empty());
    let mut merged = a.clone();
    merged.merge(&b);
    check(&merged);
    let mut other = b.clone();
    other.merge(&a);
    check(&other);
    let mut pruned = merged;
    pruned.prune(2);
    check(&pruned);
});

/// Everything a node does with a state it holds, none of which may panic.
fn check(v: &Versioned) {
    let bytes = v.encode();
    let again = Versioned::decode(&bytes).expect("what decoded or merged encodes and decodes");
    assert_eq!(&again, v, "the round trip changed the state");
    let _ = v.digest();
    let _ = v.values();
    let _ = v.is_deleted();
    let _ = v.deps();
    let _ = v.dots().count();
}
