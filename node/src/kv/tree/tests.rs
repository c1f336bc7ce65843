use super::*;
use crate::storage::MemoryStorage;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// The summary of the keys of `model` in `(from, to]`, from its definition.
fn brute(model: &BTreeMap<Vec<u8>, Vec<u8>>, from: Id, to: Id) -> Summary {
    let mut s = Summary::default();
    for (k, v) in model {
        if in_half_open(from, to, Id::hash(k)) {
            s.add(entry_hash(k, v));
        }
    }
    s
}

/// The tree a model's entries make, built from scratch.
fn tree_of(model: &BTreeMap<Vec<u8>, Vec<u8>>) -> HashTree {
    let mut t = HashTree::default();
    for (k, v) in model {
        t.replace(Id::hash(k), None, Some(entry_hash(k, v)));
    }
    t
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..8, 1..3)
}

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (key(), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key().prop_map(Op::Delete),
    ]
}

/// An interval end: anywhere, or in the leaf of some key (so partial leaves hold keys), or
/// exactly on a key.
fn end() -> impl Strategy<Value = Id> {
    prop_oneof![
        any::<[u8; 20]>().prop_map(Id),
        Just(Id::ZERO),
        Just(Id::MAX),
        key().prop_map(|k| Id::hash(&k)),
        (key(), any::<[u8; 18]>()).prop_map(|(k, tail)| {
            let mut id = Id::hash(&k);
            id.0[2..].copy_from_slice(&tail);
            id
        }),
    ]
}

fn apply(s: &mut impl Storage, model: &mut BTreeMap<Vec<u8>, Vec<u8>>, op: &Op) -> Result<()> {
    match op {
        Op::Put(k, v) => {
            s.put(k, v)?;
            model.insert(k.clone(), v.clone());
        }
        Op::Delete(k) => {
            s.delete(k)?;
            model.remove(k);
        }
    }
    Ok(())
}

proptest! {
    /// Every write updates the tree as rebuilding it from the data would.
    #[test]
    fn incremental_updates_equal_a_rebuild(ops in proptest::collection::vec(op(), 0..60)) {
        let mut s = Indexed::new(MemoryStorage::new());
        let mut model = BTreeMap::new();
        for op in &ops {
            apply(&mut s, &mut model, op)?;
        }
        prop_assert!(s.is_built());
        prop_assert_eq!(s.tree().root(), brute(&model, Id::ZERO, Id::ZERO));
        let rebuilt = tree_of(&model);
        for level in 0..=DEPTH {
            for index in 0..level_width(level) {
                if rebuilt.node(level, index) != s.tree().node(level, index) {
                    prop_assert!(false, "node {}/{} differs", level, index);
                }
            }
        }
    }

    /// A rebuild in small slices, with writes landing ahead of and behind its cursor, ends
    /// with the tree of the final data.
    #[test]
    fn a_rebuild_under_writes_ends_with_the_tree_of_the_data(
        before in proptest::collection::vec(op(), 0..40),
        during in proptest::collection::vec(op(), 0..40),
        slice in 1usize..5,
    ) {
        let mut mem = MemoryStorage::new();
        let mut model = BTreeMap::new();
        for op in &before {
            apply(&mut mem, &mut model, op)?;
        }
        let mut s = Indexed::new(mem);
        prop_assert_eq!(s.is_built(), model.is_empty());
        let mut during = during.iter();
        let mut steps = 0;
        while !s.rebuild_step(slice, usize::MAX)? {
            if let Some(op) = during.next() {
                apply(&mut s, &mut model, op)?;
            }
            steps += 1;
            prop_assert!(steps < 1000, "the rebuild does not end");
        }
        for op in during {
            apply(&mut s, &mut model, op)?;
        }
        prop_assert_eq!(s.tree(), &tree_of(&model));
    }

    /// The summary of any interval below any node is the summary of the keys there.
    #[test]
    fn summaries_of_an_interval_count_exactly_its_keys(
        ops in proptest::collection::vec(op(), 0..60),
        ends in proptest::collection::vec((end(), end()), 1..8),
    ) {
        let mut s = Indexed::new(MemoryStorage::new());
        let mut model = BTreeMap::new();
        for op in &ops {
            apply(&mut s, &mut model, op)?;
        }
        for (from, to) in ends {
            let cover = Cover::new(from, to);
            prop_assert_eq!(s.summary(&cover, 0, 0)?, brute(&model, from, to));
            // The leaves' parts, walked clockwise, visit exactly the interval's keys in ring
            // order.
            let leaves: Vec<usize> = (0..LEAVES).filter(|l| cover.touches(DEPTH, *l)).collect();
            let mut walked = Vec::new();
            s.visit_leaves(&cover, &leaves, &mut |k, _| {
                walked.push(k.to_vec());
                true
            })?;
            let mut want: Vec<(Id, Vec<u8>)> = model
                .keys()
                .filter(|k| cover.contains(Id::hash(k)))
                .map(|k| (crate::id::distance(from.succ(), Id::hash(k)), k.clone()))
                .collect();
            want.sort();
            prop_assert_eq!(walked, want.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
        }
    }

    /// Two copies that differ in one key compare equal everywhere except on the path to that
    /// key's leaf: a descent from the root finds it and nothing else.
    #[test]
    fn a_descent_finds_the_one_key_that_differs(
        ops in proptest::collection::vec(op(), 0..40),
        odd in key(),
        value in proptest::collection::vec(any::<u8>(), 0..4),
        missing in any::<bool>(),
        from in end(),
        to in end(),
    ) {
        let mut a = Indexed::new(MemoryStorage::new());
        let mut b = Indexed::new(MemoryStorage::new());
        let (mut ma, mut mb) = (BTreeMap::new(), BTreeMap::new());
        for op in &ops {
            apply(&mut a, &mut ma, op)?;
            apply(&mut b, &mut mb, op)?;
        }
        // `b` lacks `odd`, or holds another value for it.
        apply(&mut a, &mut ma, &Op::Put(odd.clone(), value.clone()))?;
        let other = Op::Put(odd.clone(), [value.as_slice(), b"!"].concat());
        let gone = Op::Delete(odd.clone());
        apply(&mut b, &mut mb, if missing { &gone } else { &other })?;
        let cover = Cover::new(from, to);
        let inside = cover.contains(Id::hash(&odd));
        // Level by level, the nodes that differ, as the two sides' descent would find them.
        let mut differ = vec![0usize];
        for level in 0..=DEPTH {
            differ.retain(|&i| {
                a.summary(&cover, level, i).ok() != b.summary(&cover, level, i).ok()
            });
            if level < DEPTH {
                differ = differ
                    .iter()
                    .flat_map(|&i| (0..FANOUT).map(move |c| i * FANOUT + c))
                    .filter(|&c| cover.touches(level + 1, c))
                    .collect();
            }
        }
        let want = if inside { vec![leaf_of(Id::hash(&odd))] } else { vec![] };
        prop_assert_eq!(differ, want);
    }
}

#[test]
fn covers_split_leaves_at_the_ends() {
    let id = |leaf: usize, tail: u8| {
        let mut b = [tail; 20];
        b[0] = (leaf >> 8) as u8;
        b[1] = leaf as u8;
        Id(b)
    };
    // Ends in leaves 3 and 7: 4, 5, 6 whole, 3 and 7 in part, the rest not.
    let c = Cover::new(id(3, 9), id(7, 1));
    assert_eq!(c.leaf_arcs(5), vec![leaf_bounds(5)]);
    assert_eq!(c.leaf_arcs(3), vec![(id(3, 9), id(3, 0xff))]);
    assert_eq!(c.leaf_arcs(7), vec![(id(6, 0xff), id(7, 1))]);
    assert!(c.leaf_arcs(8).is_empty() && c.leaf_arcs(2).is_empty());
    assert!(c.touches(0, 0) && c.touches(DEPTH - 1, 0) && !c.touches(DEPTH - 1, 1));
    // Inside one leaf.
    let c = Cover::new(id(3, 1), id(3, 9));
    assert_eq!(c.leaf_arcs(3), vec![(id(3, 1), id(3, 9))]);
    assert!(c.leaf_arcs(4).is_empty());
    // Wrapping past zero: from leaf 0xfffe round to leaf 1.
    let c = Cover::new(id(0xfffe, 5), id(1, 5));
    assert_eq!(c.leaf_arcs(0xffff), vec![leaf_bounds(0xffff)]);
    assert_eq!(c.leaf_arcs(0), vec![(Id::MAX, id(0, 0xff))]);
    assert!(c.leaf_arcs(2).is_empty());
    // The whole circle from inside leaf 3: its tail first, its head last.
    let c = Cover::new(id(3, 7), id(3, 7));
    assert_eq!(
        c.leaf_arcs(3),
        vec![(id(3, 7), id(3, 0xff)), (id(2, 0xff), id(3, 7))]
    );
    assert_eq!(c.order(DEPTH, 3), 0);
    assert_eq!(c.order(DEPTH, 2), LEAVES - 1);
    // A start on its leaf's last id leaves nothing of that leaf.
    let c = Cover::new(id(3, 0xff), id(9, 0));
    assert!(c.leaf_arcs(3).is_empty());
}

#[test]
fn an_empty_store_is_indexed_at_once_and_allocates_nothing() {
    let s = Indexed::new(MemoryStorage::new());
    assert!(s.is_built());
    assert!(s.tree().levels.is_empty());
    assert_eq!(s.tree().root(), Summary::default());
}

#[test]
fn a_watch_notes_the_keys_written_in_its_interval_until_taken() -> Result<()> {
    let mut s = Indexed::new(MemoryStorage::new());
    let (a, b) = (b"a".to_vec(), b"b".to_vec());
    let (ia, ib) = (Id::hash(&a), Id::hash(&b));
    // An interval with `a` in it and `b` outside.
    let arc = (ib, ia);
    assert!(in_half_open(arc.0, arc.1, ia) && !in_half_open(arc.0, arc.1, ib));
    s.put(&a, b"before")?;
    s.watch(Some(arc), [b"by hand".to_vec()]);
    assert!(s.is_watching() && !s.watched_is_empty());
    s.put(&a, b"1")?;
    s.put(&b, b"1")?;
    s.delete(&a)?;
    let (taken, overflowed) = s.take_watched(10);
    assert_eq!(taken, vec![a.clone(), b"by hand".to_vec()]);
    assert!(!overflowed && s.watched_is_empty());
    s.put(&b, b"2")?;
    assert!(
        s.watched_is_empty(),
        "a key outside the interval is not noted"
    );
    s.unwatch();
    s.put(&a, b"2")?;
    assert!(!s.is_watching() && s.watched_is_empty());
    Ok(())
}

#[test]
fn a_watch_that_overflows_says_so_once() {
    let mut s = Indexed::new(MemoryStorage::new());
    s.watch(None, (0..MAX_WATCHED + 5).map(|i| i.to_be_bytes().to_vec()));
    let (taken, overflowed) = s.take_watched(usize::MAX);
    assert_eq!(taken.len(), MAX_WATCHED);
    assert!(overflowed, "five keys were not remembered");
    assert_eq!(s.take_watched(usize::MAX), (Vec::new(), false));
}
