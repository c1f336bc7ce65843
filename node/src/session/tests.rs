//! Tests of sessions: floors, what writes carry, stability, bounds, the saved form and merges.

use super::*;
use crate::version::test_support::{dot, n, vv};
use crate::version::{Versioned, test_support::val};

fn session(b: u8) -> Session {
    Session::with_id(SessionId([b; 16]))
}

#[test]
fn a_floor_names_the_guarantee_a_state_would_break() {
    let f = Floor {
        read: vv(&[(1, 2)]),
        wrote: vec![dot(2, 5)],
        deps: vv(&[(3, 1)]),
    };
    let all = vv(&[(1, 2), (2, 5), (3, 1)]);
    assert_eq!(f.unmet_by_read(&all), None);
    assert_eq!(f.unmet_by_write(&all), None);
    assert_eq!(
        f.unmet_by_read(&vv(&[(1, 2), (2, 4), (3, 1)])),
        Some(Guarantee::ReadYourWrites)
    );
    assert_eq!(
        f.unmet_by_read(&vv(&[(1, 1), (2, 5), (3, 1)])),
        Some(Guarantee::MonotonicReads)
    );
    assert_eq!(
        f.unmet_by_read(&vv(&[(1, 2), (2, 5)])),
        Some(Guarantee::WritesFollowReads)
    );
    assert_eq!(
        f.unmet_by_write(&vv(&[(1, 2), (3, 1)])),
        Some(Guarantee::MonotonicWrites)
    );
    assert_eq!(
        f.unmet_by_write(&vv(&[(2, 5), (3, 1)])),
        Some(Guarantee::WritesFollowReads)
    );
    assert_eq!(f.vector(), all);
    assert!(Floor::default().is_empty());
    assert_eq!(Floor::default().unmet_by_read(&VersionVector::new()), None);
}

#[test]
fn a_session_requires_what_it_read_wrote_and_inherited() {
    let mut s = session(1);
    assert!(s.floor(b"x").is_empty());
    let mut deps = Deps::new();
    deps.add(b"post", &vv(&[(9, 4)]));
    s.observe_read(b"x", &vv(&[(1, 3)]), &deps, false);
    s.observe_write(b"y", dot(2, 7), false);
    assert_eq!(s.floor(b"x").read, vv(&[(1, 3)]));
    assert_eq!(s.floor(b"y").wrote, vec![dot(2, 7)]);
    assert_eq!(s.floor(b"post").deps, vv(&[(9, 4)]));
    assert_eq!(s.len(), 3);
    // A later write of y replaces the one named before.
    s.observe_write(b"y", dot(1, 9), false);
    assert_eq!(s.floor(b"y").wrote, vec![dot(1, 9)]);
    // A write of x carries what x was read at in its context, and the other keys as deps.
    let w = s.for_write(b"x").expect("within bounds");
    assert_eq!(w.floor.read, vv(&[(1, 3)]));
    let carried: Vec<&[u8]> = w.deps.iter().map(|(k, _)| k).collect();
    assert_eq!(carried, [b"post".as_slice(), b"y".as_slice()]);
    assert_eq!(s.write_context(b"x", &vv(&[(5, 1)])), vv(&[(1, 3), (5, 1)]));
    // A stable key is still carried while the bounds allow it.
    s.observe_read(b"post", &vv(&[(9, 4)]), &Deps::new(), true);
    let w = s.for_write(b"x").expect("within bounds");
    assert_eq!(w.deps.len(), 2);
    assert_eq!(s.unstable(), 2);
}

#[test]
fn a_stable_read_of_a_state_that_misses_part_of_the_floor_is_not_stable() {
    let mut s = session(1);
    s.observe_write(b"k", dot(2, 3), false);
    // The node checks the floor, but if it did not, stability must not be claimed for more
    // than the state read.
    s.observe_read(b"k", &vv(&[(1, 1)]), &Deps::new(), true);
    assert_eq!(s.unstable(), 1);
    s.observe_read(b"k", &vv(&[(1, 1), (2, 3)]), &Deps::new(), true);
    assert_eq!(s.unstable(), 0);
}

#[test]
fn bounds_are_refused_explicitly_never_dropped() {
    let mut s = session(1);
    for i in 0..=MAX_DEPS {
        s.observe_write(format!("k{i}").as_bytes(), dot(1, i as u64 + 1), false);
    }
    assert!(s.needs_compaction());
    // A write of a fresh key would carry MAX_DEPS + 1 dependencies.
    match s.for_write(b"new") {
        Err(Error::SessionFull(msg)) => assert!(msg.contains("dependencies"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    // The oldest keys are the ones to probe.
    let c = s.compaction_candidates();
    assert_eq!(c.len(), MAX_DEPS + 1 - MAX_DEPS / 2);
    assert_eq!(c[0], b"k0");
    for k in &c {
        let d = s.floor(k).wrote[0];
        s.observe_read(
            k,
            &VersionVector::from_iter([(d.actor, d.counter)]),
            &Deps::new(),
            true,
        );
    }
    assert!(!s.needs_compaction());
    // The write carries the bound's worth, the oldest stable key left out.
    let w = s.for_write(b"new").expect("compacted");
    assert_eq!(w.deps.len(), MAX_DEPS);
    assert!(w.deps.iter().all(|(k, _)| k != b"k0"));
    assert!(w.deps.iter().any(|(k, _)| k == b"k1"));
    // The key bound.
    let mut full = session(2);
    for i in 0..MAX_KEYS {
        full.observe_read(
            format!("{i}").as_bytes(),
            &vv(&[(1, 1)]),
            &Deps::new(),
            true,
        );
    }
    assert!(full.admit(b"0").is_ok());
    assert!(matches!(full.admit(b"fresh"), Err(Error::SessionFull(_))));
}

#[test]
fn dependencies_are_checked_by_the_node_for_size_and_shape() {
    let mut deps = Deps::new();
    for i in 0..MAX_DEPS {
        deps.add(format!("{i:04}").as_bytes(), &vv(&[(1, 1)]));
    }
    assert!(deps.validate().is_ok());
    deps.add(b"one more", &vv(&[(1, 1)]));
    assert!(matches!(deps.validate(), Err(Error::InvalidInput(_))));
    let mut big = Deps::new();
    big.add(&vec![b'k'; MAX_DEPS_BYTES], &vv(&[(1, 1)]));
    assert!(matches!(big.validate(), Err(Error::InvalidInput(_))));
    // Unsorted, as a forged request could send.
    let forged = Deps(vec![
        (b"b".to_vec(), vv(&[(1, 1)])),
        (b"a".to_vec(), vv(&[(1, 1)])),
    ]);
    assert!(matches!(forged.validate(), Err(Error::InvalidInput(_))));
    let floor = Floor {
        wrote: (1..=MAX_WROTE as u64 + 1).map(|c| dot(1, c)).collect(),
        ..Floor::default()
    };
    assert!(matches!(floor.validate(), Err(Error::InvalidInput(_))));
}

#[test]
fn the_saved_form_round_trips_and_refuses_other_formats() {
    let mut s = session(7);
    let mut deps = Deps::new();
    deps.add(b"p", &vv(&[(3, 3)]));
    s.observe_read(b"x", &vv(&[(1, 3)]), &deps, false);
    s.observe_write(b"y", dot(2, 7), true);
    let bytes = s.to_bytes();
    assert_eq!(Session::from_bytes(&bytes).expect("round trip"), s);
    assert!(matches!(
        Session::from_bytes(b"nope"),
        Err(Error::InvalidData(_))
    ));
    let mut other_format = bytes.clone();
    other_format[4] = 99;
    match Session::from_bytes(&other_format) {
        Err(Error::InvalidData(m)) => assert!(m.contains("format version 99"), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(Session::from_bytes(&trailing).is_err());
    assert!(Session::from_bytes(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn merging_two_copies_of_a_session_keeps_every_requirement() {
    let base = session(3);
    let (mut a, mut b) = (base.clone(), base.clone());
    a.observe_write(b"k", dot(1, 4), true);
    b.observe_write(b"k", dot(2, 6), false);
    b.observe_read(b"j", &vv(&[(2, 1)]), &Deps::new(), false);
    let mut m = a.clone();
    m.merge(&b).expect("same session");
    // Both processes' writes are named, so the next write replaces both.
    assert_eq!(m.floor(b"k").wrote, vec![dot(1, 4), dot(2, 6)]);
    assert_eq!(m.floor(b"j").read, vv(&[(2, 1)]));
    // a's stability does not cover b's write.
    assert_eq!(m.unstable(), 2);
    // Merging is a join: either order, and again, give the same requirements.
    let mut m2 = b.clone();
    m2.merge(&a).expect("same session");
    assert_eq!(m2.floor(b"k"), m.floor(b"k"));
    let again = m.clone();
    m.merge(&again).expect("same session");
    assert_eq!(m.floor(b"k"), again.floor(b"k"));
    assert!(matches!(m.merge(&session(4)), Err(Error::InvalidInput(_))));
}

#[test]
fn a_session_write_replaces_its_own_earlier_write_and_nothing_it_did_not_see() {
    // Owner 1 holds a stranger's blind write (1,1) and the session's blind write (1,2). A
    // vector covering the session's dot, {1:2}, would also cover the stranger's version and
    // drop it unseen; naming the dot replaces the session's own version only.
    let mut state = Versioned::empty();
    let theirs = state.write(n(1), &VersionVector::new(), val("theirs"));
    let mine = state.write(n(1), &VersionVector::new(), val("mine"));
    let mut s = session(5);
    s.observe_write(b"k", mine, false);
    let w = s.for_write(b"k").expect("within bounds");
    assert!(w.floor.unmet_by_write(state.context()).is_none());
    let ctx = s.write_context(b"k", &VersionVector::new());
    let next = state.write_replacing(n(1), &ctx, &w.floor.wrote, val("mine again"), None);
    let dots: Vec<Dot> = state.dots().collect();
    assert_eq!(dots, [theirs, next]);
    // The dependencies written with a version come back with the state, and survive a merge.
    let mut deps = Deps::new();
    deps.add(b"post", &vv(&[(4, 4)]));
    let mut other = Versioned::empty();
    other.write_replacing(n(2), &VersionVector::new(), &[], val("reply"), Some(&deps));
    state.merge(&other);
    assert_eq!(state.deps(), deps);
    assert_eq!(state.siblings().len(), 3);
}

#[test]
fn forgetting_at_the_key_bound_drops_only_the_oldest_stable_floors() {
    let mut s = session(9);
    // Keys 0..6 in order: the even ones stable.
    for i in 0..6u8 {
        s.observe_write(&[i], dot(1, u64::from(i) + 1), i % 2 == 0);
    }
    assert_eq!(s.forget_stable(6), 0, "within the bound nothing goes");
    assert_eq!(s.forget_stable(4), 2);
    let keys: Vec<Vec<u8>> = s.iter().map(|(k, _, _)| k.to_vec()).collect();
    assert_eq!(
        keys,
        [vec![1], vec![3], vec![4], vec![5]],
        "0 and 2 were the oldest stable"
    );
    // Below the count of unstable floors it stops at them.
    assert_eq!(s.forget_stable(0), 1);
    assert_eq!(s.len(), 3);
    assert_eq!(s.unstable(), 3);
}
