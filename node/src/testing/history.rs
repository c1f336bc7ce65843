//! LOST-WRITE CHECKER
//!
//! Simulation and end-to-end tests record what their clients did, as a [`History`], and ask
//! [`check`] whether the store lost anything. Per key, a history holds each write issued (its
//! value, `None` for a delete; the context it was issued with; and, if the store acknowledged it,
//! the [`Dot`] the store assigned) and one final read (the surviving siblings and the context).
//!
//! THE RULE
//!
//! The store may drop a version only when a write that had seen it replaced it (see
//! [`crate::version`]), and a replaced version must stay gone. A write has seen a version when
//! the context it was issued with covers the version's dot. So, for each key, an ACKNOWLEDGED put
//! `w` with dot `d` and value `v` is accounted for exactly when
//!
//! 1. it survives: the final read holds the sibling `(d, v)`, or `v` under a dot no acknowledged
//!    write was given (an earlier application of the same write by an owner that failed before
//!    answering, the retry having been applied elsewhere); or
//! 2. it was superseded: some other write `w'` on the same key was issued with a context that
//!    covers `d`, and `w'` took effect. A write took effect if it was acknowledged, or, if it was
//!    not, if it is a delete or is observed: the final read holds a sibling with `w'`'s value
//!    under a dot that no acknowledged write of the key was given.
//!
//! Otherwise it is a [`Violation::LostWrite`]. And
//!
//! 3. nothing replaced comes back: a sibling WITH A VALUE in the final read whose dot is covered
//!    by the context of an acknowledged write `by` (other than the sibling's own) is a
//!    [`Violation::Resurrected`]. `by` had seen that version and replaced it; its state is durable
//!    on W replicas, and every merge with it drops the version, so a correct store can never
//!    show it again. What can is tombstone collection done too early: once a tombstone's state is
//!    gone, nothing covers the versions it replaced, and a stale copy brings them back.
//!
//! An acknowledged DELETE is never reported lost: a tombstone has no observable value. What a
//! delete promises is that the values its context covered are gone, and that is what rule 3
//! checks; its tombstone may be collected once every replica has it, leaving the key with no
//! state at all, or, after a later blind write, with a context that does not cover the delete's
//! dot. An unacknowledged write may or may not survive and is never reported lost, and its
//! context counts for rule 2 only as above, for rule 3 not at all.
//!
//! Why an unacknowledged put `w'` must be observed to count: if it never reached the store, it
//! replaced nothing, and a store that dropped `w` anyway lost it. The rule is still fair to a
//! correct store whose unacknowledged `w'` did take effect and then vanished: a version with a
//! value can only vanish by being replaced in turn by some `w''` whose context covers `w'`'s dot,
//! and a context that covers `w'`'s dot was joined from the state `w'` made, which covered `d`;
//! so `w''`'s context covers `d` too. Following such a chain ends at a write that survives
//! (observed), was acknowledged, or is a delete, and that write's context covers `d`. A delete
//! counts unobserved because its tombstone may have been collected: the final read cannot tell
//! a delete that never took effect from one that did and was collected. The rule needs no
//! "covered by the final context" clause: whether a surviving sibling causally follows `w` can
//! only be known from the context its write was issued with, which is clause 2.
//!
//! The final read also has to be explained: a sibling is a [`Violation::Phantom`] unless it is
//! the `(dot, value)` of an acknowledged write, or its dot is no acknowledged write's and some
//! write of the key had its value. One write's value surviving as two siblings is a
//! [`Violation::Duplicated`]: the write was applied twice. Values must be unique per write for
//! these two rules to mean anything; the tests' workloads make them so. And it checks what the
//! rules lean on: that no two acknowledged writes of a key got the same dot
//! ([`Violation::DuplicateDot`]), that no write got a dot its own context already covered
//! ([`Violation::StaleDot`]), that the final read's context covers its siblings
//! ([`Violation::SiblingOutsideContext`]), and that every written key was read
//! ([`Violation::NotRead`]), so that a forgotten read cannot pass for a clean one.
//!
//! ASSUMPTIONS
//!
//! - The final read is of a converged state (after anti-entropy, or every replica merged), so it
//!   holds every sibling the store still has. A read of one stale replica may report a write as
//!   lost that another replica holds.
//! - A retry is recorded as a write of its own (with the same value). Values of unacknowledged
//!   writes are matched by value, so tests should make values unique.
//! - Context pruning ([`crate::version::Versioned::prune`]) breaks both the chain argument above
//!   (a pruned context can cover `w'`'s dot without covering `d`) and rule 3 (a context that no
//!   longer covers a replaced version lets a merge bring it back, as a spurious sibling). So for
//!   a pruning store the rules can report a loss or a resurrection the store did not make; use
//!   [`check_with`] and [`Supersession::Any`] there, which counts every unacknowledged write as
//!   possibly applied and leaves rule 3 out. With every write acknowledged the two agree on lost
//!   writes.

use crate::version::{Dot, Sibling, VersionVector, Versioned};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which write of a [`History`]: its position in [`History::writes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId(pub usize);

/// One write as a client issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// The key written.
    pub key: Vec<u8>,
    /// The value written, `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// The context the write was issued with (empty for a blind write).
    pub context: VersionVector,
    /// The dot the store assigned, if it acknowledged the write; `None` if the client got no
    /// acknowledgement (an error or a timeout: the write may or may not have taken effect).
    pub ack: Option<Dot>,
}

/// The last read of a key: what survives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRead {
    /// The surviving siblings, tombstones included.
    pub siblings: Vec<Sibling>,
    /// The context the read returned.
    pub context: VersionVector,
}

/// What clients did to a store: writes and final reads, for [`check`]. Serializable, so a failing
/// test can print or save it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    writes: Vec<WriteRecord>,
    reads: BTreeMap<Vec<u8>, FinalRead>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Record a write as it is issued, not yet acknowledged.
    pub fn record_write(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: VersionVector,
    ) -> WriteId {
        self.writes.push(WriteRecord {
            key: key.to_vec(),
            value,
            context,
            ack: None,
        });
        WriteId(self.writes.len() - 1)
    }

    /// Record that the store acknowledged write `id` and gave it `dot`.
    ///
    /// # Panics
    /// If `id` is not a write of this history, or it was already acknowledged with another dot:
    /// both are bugs in the test that records.
    pub fn record_ack(&mut self, id: WriteId, dot: Dot) {
        let count = self.writes.len();
        let write = self
            .writes
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("no write {} in a history of {count}", id.0));
        assert!(
            write.ack.is_none() || write.ack == Some(dot),
            "write {} acknowledged twice, with {:?} and {dot}",
            id.0,
            write.ack
        );
        write.ack = Some(dot);
    }

    /// Record the final read of `key`; a later one for the same key replaces it.
    pub fn record_final_read(
        &mut self,
        key: &[u8],
        siblings: Vec<Sibling>,
        context: VersionVector,
    ) {
        self.reads
            .insert(key.to_vec(), FinalRead { siblings, context });
    }

    /// Record the final read of `key` from a whole stored state.
    pub fn record_final_state(&mut self, key: &[u8], state: &Versioned) {
        self.record_final_read(key, state.siblings().to_vec(), state.context().clone());
    }

    /// All writes, in the order recorded.
    pub fn writes(&self) -> &[WriteRecord] {
        &self.writes
    }

    /// The final read of each key.
    pub fn final_reads(&self) -> &BTreeMap<Vec<u8>, FinalRead> {
        &self.reads
    }
}

/// Something [`check`] found wrong with a history. Keys are raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Violation {
    /// An acknowledged put neither survives nor was superseded by a write that had seen it and
    /// took effect. (An acknowledged delete is never lost: see the module docs.)
    LostWrite {
        /// The key.
        key: Vec<u8>,
        /// The lost write.
        write: WriteId,
        /// The dot it was acknowledged with.
        dot: Dot,
    },
    /// One write's value survives as several siblings: it was applied more than once.
    Duplicated {
        /// The key.
        key: Vec<u8>,
        /// The write.
        write: WriteId,
        /// How many siblings hold its value.
        copies: usize,
    },
    /// A surviving sibling no write explains: a value nobody wrote, or an acknowledged write's
    /// dot with another value.
    Phantom {
        /// The key.
        key: Vec<u8>,
        /// The unexplained sibling.
        sibling: Sibling,
    },
    /// A value came back: the final read holds a sibling with a value whose dot the context of
    /// an acknowledged write had covered, so that write had seen it and replaced it. Not
    /// reported under [`Supersession::Any`].
    Resurrected {
        /// The key.
        key: Vec<u8>,
        /// The sibling that came back.
        sibling: Sibling,
        /// The first acknowledged write, in history order, that had replaced it.
        by: WriteId,
    },
    /// Two acknowledged writes of one key were given the same dot.
    DuplicateDot {
        /// The key.
        key: Vec<u8>,
        /// The dot given twice.
        dot: Dot,
        /// The earlier write with it.
        first: WriteId,
        /// The later write with it.
        second: WriteId,
    },
    /// A write was given a dot that the context it was issued with already covered, so it would
    /// count as seen and replaced by its own writer.
    StaleDot {
        /// The key.
        key: Vec<u8>,
        /// The write.
        write: WriteId,
        /// The dot it was given.
        dot: Dot,
    },
    /// The final read holds a sibling its own context does not cover.
    SiblingOutsideContext {
        /// The key.
        key: Vec<u8>,
        /// The sibling's dot.
        dot: Dot,
    },
    /// A key was written but never read at the end, so nothing about it was checked.
    NotRead {
        /// The key.
        key: Vec<u8>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
        match self {
            Violation::LostWrite { key, write, dot } => write!(
                f,
                "key {:?}: acknowledged write {} ({dot}) was lost: it does not survive and no \
                 write that had seen it took effect",
                k(key),
                write.0
            ),
            Violation::Duplicated { key, write, copies } => write!(
                f,
                "key {:?}: write {} survives as {copies} siblings (applied more than once)",
                String::from_utf8_lossy(key),
                write.0
            ),
            Violation::Phantom { key, sibling } => write!(
                f,
                "key {:?}: sibling {} holds a value no write explains",
                k(key),
                sibling.dot
            ),
            Violation::Resurrected { key, sibling, by } => write!(
                f,
                "key {:?}: sibling {} came back after acknowledged write {}, which had seen it, \
                 replaced it",
                k(key),
                sibling.dot,
                by.0
            ),
            Violation::DuplicateDot {
                key,
                dot,
                first,
                second,
            } => write!(
                f,
                "key {:?}: writes {} and {} were both given dot {dot}",
                k(key),
                first.0,
                second.0
            ),
            Violation::StaleDot { key, write, dot } => write!(
                f,
                "key {:?}: write {} was given dot {dot}, which its own context covers",
                k(key),
                write.0
            ),
            Violation::SiblingOutsideContext { key, dot } => write!(
                f,
                "key {:?}: final sibling {dot} is not covered by the final context",
                k(key)
            ),
            Violation::NotRead { key } => {
                write!(f, "key {:?}: written but never read at the end", k(key))
            }
        }
    }
}

/// Which unacknowledged writes [`check_with`] lets supersede an acknowledged one, and whether
/// it reports resurrected values: the rules for a store that keeps its contexts whole, or for
/// one that prunes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Supersession {
    /// Only deletes and the writes observed in the final read, and rule 3 applies
    /// ([`Violation::Resurrected`]): the rules in the module docs, and what [`check`] uses.
    /// Catches a store that drops a write in favour of a put it never applied, and one that
    /// shows a replaced value again; sound for stores that do not prune contexts.
    Observed,
    /// All of them, since the store may have applied any, and no [`Violation::Resurrected`],
    /// since pruning may legitimately bring a replaced value back as a spurious sibling (PRUNING
    /// in [`crate::version`]). Misses both bugs above, but stays sound when contexts are pruned:
    /// a store drops a version only when some write issued with a context covering it took
    /// effect, and pruning never adds coverage.
    Any,
}

/// Judge `history` by the rule in the module docs ([`Supersession::Observed`]). Returns every
/// violation, by key, then in the order: not read, duplicate and stale dots, siblings outside
/// the context, phantoms, resurrected values, lost writes. An empty result means nothing
/// acknowledged was lost, nothing unwritten appeared and nothing replaced came back.
pub fn check(history: &History) -> Vec<Violation> {
    check_with(history, Supersession::Observed)
}

/// [`check`] with a choice of which unacknowledged writes may supersede.
pub fn check_with(history: &History, rule: Supersession) -> Vec<Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<WriteId>> = BTreeMap::new();
    for (i, w) in history.writes.iter().enumerate() {
        by_key.entry(&w.key).or_default().push(WriteId(i));
    }
    for key in history.reads.keys() {
        by_key.entry(key).or_default();
    }
    let mut out = Vec::new();
    for (key, ids) in by_key {
        match history.reads.get(key) {
            Some(read) => check_key(history, rule, key, &ids, read, &mut out),
            None => out.push(Violation::NotRead { key: key.to_vec() }),
        }
    }
    out
}

/// [`check_with`] for one key's writes `ids` and final `read`.
fn check_key(
    history: &History,
    rule: Supersession,
    key: &[u8],
    ids: &[WriteId],
    read: &FinalRead,
    out: &mut Vec<Violation>,
) {
    let write = |id: WriteId| &history.writes[id.0];

    // Acknowledged dots, and whether the store handed out a dot twice or a stale one.
    let mut acked: BTreeMap<Dot, WriteId> = BTreeMap::new();
    for &id in ids {
        let w = write(id);
        let Some(dot) = w.ack else { continue };
        if let Some(&first) = acked.get(&dot) {
            out.push(Violation::DuplicateDot {
                key: key.to_vec(),
                dot,
                first,
                second: id,
            });
        } else {
            acked.insert(dot, id);
        }
        if w.context.covers(&dot) {
            out.push(Violation::StaleDot {
                key: key.to_vec(),
                write: id,
                dot,
            });
        }
    }

    for s in &read.siblings {
        if !read.context.covers(&s.dot) {
            out.push(Violation::SiblingOutsideContext {
                key: key.to_vec(),
                dot: s.dot,
            });
        }
    }

    // Siblings under dots no acknowledged write was given: what unacknowledged writes left.
    let unclaimed: BTreeSet<&Option<Vec<u8>>> = read
        .siblings
        .iter()
        .filter(|s| !acked.contains_key(&s.dot))
        .map(|s| &s.value)
        .collect();
    let unacked_values: BTreeSet<&Option<Vec<u8>>> = ids
        .iter()
        .map(|&id| write(id))
        .filter(|w| w.ack.is_none())
        .map(|w| &w.value)
        .collect();
    // A retried write may have been applied first by an owner that then failed, under a dot of
    // its own: its value under an unclaimed dot is still that write.
    let acked_values: BTreeSet<&Option<Vec<u8>>> = ids
        .iter()
        .map(|&id| write(id))
        .filter(|w| w.ack.is_some())
        .map(|w| &w.value)
        .collect();

    for s in &read.siblings {
        let acked_here = ids
            .iter()
            .any(|&id| write(id).ack == Some(s.dot) && write(id).value == s.value);
        let unacked_here = !acked.contains_key(&s.dot)
            && (unacked_values.contains(&s.value) || acked_values.contains(&s.value));
        if !acked_here && !unacked_here {
            out.push(Violation::Phantom {
                key: key.to_vec(),
                sibling: s.clone(),
            });
        }
    }

    // Rule 3: a value an acknowledged write had seen and replaced does not come back. A write
    // whose own dot is the sibling's is left to StaleDot and DuplicateDot.
    if rule == Supersession::Observed {
        for s in read.siblings.iter().filter(|s| s.value.is_some()) {
            let by = ids.iter().copied().find(|&id| {
                let w = write(id);
                w.ack.is_some_and(|d| d != s.dot) && w.context.covers(&s.dot)
            });
            if let Some(by) = by {
                out.push(Violation::Resurrected {
                    key: key.to_vec(),
                    sibling: s.clone(),
                    by,
                });
            }
        }
    }

    // An unacknowledged delete counts as applied even unobserved: its tombstone may have been
    // collected.
    let took_effect = |id: WriteId| {
        let w = write(id);
        w.ack.is_some()
            || w.value.is_none()
            || rule == Supersession::Any
            || unclaimed.contains(&w.value)
    };
    for &id in ids {
        let w = write(id);
        let Some(dot) = w.ack else { continue };
        // A delete has no value to lose; what it promises is rule 3's.
        if w.value.is_none() {
            continue;
        }
        let copies = read.siblings.iter().filter(|s| s.value == w.value).count();
        if copies > 1 {
            out.push(Violation::Duplicated {
                key: key.to_vec(),
                write: id,
                copies,
            });
        }
        let survives = read
            .siblings
            .iter()
            .any(|s| s.value == w.value && (s.dot == dot || !acked.contains_key(&s.dot)));
        let superseded = ids
            .iter()
            .any(|&other| other != id && write(other).context.covers(&dot) && took_effect(other));
        if !survives && !superseded {
            out.push(Violation::LostWrite {
                key: key.to_vec(),
                write: id,
                dot,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::version::test_support::{dot, n, val, vv};

    fn sib(a: u8, c: u64, v: &str) -> Sibling {
        Sibling {
            dot: dot(a, c),
            value: val(v),
            deps: None,
        }
    }

    const K: &[u8] = b"k";

    /// Two clients write `x` and `y` blind, through nodes 1 and 2; both are acknowledged.
    fn two_concurrent_writes() -> History {
        let mut h = History::new();
        let x = h.record_write(K, val("x"), VersionVector::new());
        h.record_ack(x, dot(1, 1));
        let y = h.record_write(K, val("y"), VersionVector::new());
        h.record_ack(y, dot(2, 1));
        h
    }

    /// A retried write: node 1 applied it (dot 1:1) and failed before answering; node 2 applied
    /// the retry (dot 2:1) and acknowledged it.
    fn retried_write() -> History {
        let mut h = History::new();
        let x = h.record_write(K, val("x"), VersionVector::new());
        h.record_ack(x, dot(2, 1));
        h
    }

    #[test]
    fn a_retried_write_surviving_under_its_first_dot_passes() {
        let mut h = retried_write();
        h.record_final_read(K, vec![sib(1, 1, "x")], vv(&[(1, 1), (2, 1)]));
        assert_eq!(check(&h), []);
    }

    /// Negative control: the same write kept twice, once per application.
    #[test]
    fn a_write_applied_twice_is_reported() {
        let mut h = retried_write();
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "x")],
            vv(&[(1, 1), (2, 1)]),
        );
        assert_eq!(
            check(&h),
            [Violation::Duplicated {
                key: K.to_vec(),
                write: WriteId(0),
                copies: 2
            }]
        );
    }

    #[test]
    fn concurrent_writes_kept_as_siblings_pass() {
        let mut h = two_concurrent_writes();
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "y")],
            vv(&[(1, 1), (2, 1)]),
        );
        assert_eq!(check(&h), []);
    }

    /// Negative control: a last-write-wins store keeps only the "later" of two concurrent
    /// acknowledged writes.
    #[test]
    fn last_write_wins_dropping_a_concurrent_write_is_reported() {
        let mut h = two_concurrent_writes();
        h.record_final_read(K, vec![sib(2, 1, "y")], vv(&[(1, 1), (2, 1)]));
        assert_eq!(
            check(&h),
            [Violation::LostWrite {
                key: K.to_vec(),
                write: WriteId(0),
                dot: dot(1, 1)
            }]
        );
    }

    /// Negative control: a value nobody wrote.
    #[test]
    fn a_phantom_value_is_reported() {
        let mut h = two_concurrent_writes();
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "y"), sib(3, 1, "zzz")],
            vv(&[(1, 1), (2, 1), (3, 1)]),
        );
        assert_eq!(
            check(&h),
            [Violation::Phantom {
                key: K.to_vec(),
                sibling: sib(3, 1, "zzz")
            }]
        );
        // An acknowledged write's dot with another value is a phantom too (and the write lost).
        let mut h = two_concurrent_writes();
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "z")],
            vv(&[(1, 1), (2, 1)]),
        );
        let v = check(&h);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(matches!(v[0], Violation::Phantom { .. }));
        assert!(matches!(
            v[1],
            Violation::LostWrite {
                write: WriteId(1),
                ..
            }
        ));
    }

    #[test]
    fn a_correctly_superseded_history_passes() {
        let mut h = two_concurrent_writes();
        let xy = h.record_write(K, val("xy"), vv(&[(1, 1), (2, 1)]));
        h.record_ack(xy, dot(1, 2));
        h.record_final_read(K, vec![sib(1, 2, "xy")], vv(&[(1, 2), (2, 1)]));
        assert_eq!(check(&h), []);

        // Deleted by a write that had seen both: only the tombstone survives.
        let mut h = two_concurrent_writes();
        let del = h.record_write(K, None, vv(&[(1, 1), (2, 1)]));
        h.record_ack(del, dot(2, 2));
        let tomb = Sibling {
            dot: dot(2, 2),
            value: None,
            deps: None,
        };
        h.record_final_read(K, vec![tomb], vv(&[(1, 1), (2, 2)]));
        assert_eq!(check(&h), []);
    }

    #[test]
    fn superseded_by_an_unacknowledged_write_that_took_effect_passes() {
        let mut h = two_concurrent_writes();
        // The reply was lost, but the write is there.
        h.record_write(K, val("xy"), vv(&[(1, 1), (2, 1)]));
        h.record_final_read(K, vec![sib(1, 2, "xy")], vv(&[(1, 2), (2, 1)]));
        assert_eq!(check(&h), []);

        // It took effect and was replaced in turn by an acknowledged write that had seen it.
        let mut h = two_concurrent_writes();
        h.record_write(K, val("xy"), vv(&[(1, 1), (2, 1)]));
        let last = h.record_write(K, val("xyz"), vv(&[(1, 2), (2, 1)]));
        h.record_ack(last, dot(2, 2));
        h.record_final_read(K, vec![sib(2, 2, "xyz")], vv(&[(1, 2), (2, 2)]));
        assert_eq!(check(&h), []);
    }

    /// Negative control: the only write that had seen `x` never reached the store, yet `x` is
    /// gone.
    #[test]
    fn superseded_only_by_a_write_that_never_took_effect_is_reported() {
        let mut h = two_concurrent_writes();
        h.record_write(K, val("xy"), vv(&[(1, 1), (2, 1)]));
        h.record_final_read(K, vec![sib(2, 1, "y")], vv(&[(1, 1), (2, 1)]));
        let v = check(&h);
        assert_eq!(
            v,
            [Violation::LostWrite {
                key: K.to_vec(),
                write: WriteId(0),
                dot: dot(1, 1)
            }]
        );
        assert!(
            v[0].to_string().contains("acknowledged write 0"),
            "{}",
            v[0]
        );
        // The lenient rule cannot tell, which is its price.
        assert_eq!(check_with(&h, Supersession::Any), []);
    }

    #[test]
    fn unacknowledged_writes_may_vanish_or_survive() {
        let mut h = two_concurrent_writes();
        h.record_write(K, val("maybe"), VersionVector::new());
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "y")],
            vv(&[(1, 1), (2, 1)]),
        );
        assert_eq!(check(&h), []);
        h.record_final_read(
            K,
            vec![sib(1, 1, "x"), sib(2, 1, "y"), sib(3, 1, "maybe")],
            vv(&[(1, 1), (2, 1), (3, 1)]),
        );
        assert_eq!(check(&h), []);
    }

    #[test]
    fn store_bookkeeping_faults_are_reported() {
        let mut h = History::new();
        let a = h.record_write(K, val("a"), VersionVector::new());
        h.record_ack(a, dot(1, 1));
        let b = h.record_write(K, val("b"), vv(&[(1, 1)]));
        h.record_ack(b, dot(1, 1)); // stale and duplicate
        h.record_write(b"other", val("c"), VersionVector::new());
        h.record_final_read(
            K,
            vec![sib(1, 1, "a"), sib(1, 1, "b")],
            VersionVector::new(),
        );
        let v = check(&h);
        assert_eq!(
            v,
            [
                Violation::DuplicateDot {
                    key: K.to_vec(),
                    dot: dot(1, 1),
                    first: a,
                    second: b
                },
                Violation::StaleDot {
                    key: K.to_vec(),
                    write: b,
                    dot: dot(1, 1)
                },
                Violation::SiblingOutsideContext {
                    key: K.to_vec(),
                    dot: dot(1, 1)
                },
                Violation::SiblingOutsideContext {
                    key: K.to_vec(),
                    dot: dot(1, 1)
                },
                Violation::NotRead {
                    key: b"other".to_vec()
                },
            ]
        );
    }

    /// `a` written (dot 1:1), then deleted by a write that had seen it (dot 1:2); both
    /// acknowledged.
    fn put_then_delete() -> (History, WriteId, WriteId) {
        let mut h = History::new();
        let a = h.record_write(K, val("a"), VersionVector::new());
        h.record_ack(a, dot(1, 1));
        let del = h.record_write(K, None, vv(&[(1, 1)]));
        h.record_ack(del, dot(1, 2));
        (h, a, del)
    }

    /// Negative control for rule 3: the tombstone was collected and a stale copy of `a` came
    /// back.
    #[test]
    fn a_value_back_after_its_delete_is_reported() {
        let (mut h, _, del) = put_then_delete();
        h.record_final_read(K, vec![sib(1, 1, "a")], vv(&[(1, 1)]));
        let v = check(&h);
        assert_eq!(
            v,
            [Violation::Resurrected {
                key: K.to_vec(),
                sibling: sib(1, 1, "a"),
                by: del
            }]
        );
        assert!(
            v[0].to_string().contains("acknowledged write 1"),
            "{}",
            v[0]
        );
        // Pruning can bring a replaced value back legitimately, so the lenient rule does not
        // look.
        assert_eq!(check_with(&h, Supersession::Any), []);
    }

    /// The tombstone replaced `a` and was then collected: nothing is left, and nothing is lost.
    #[test]
    fn a_deleted_key_whose_tombstone_was_collected_passes() {
        let (mut h, _, _) = put_then_delete();
        h.record_final_read(K, vec![], VersionVector::new());
        assert_eq!(check(&h), []);
    }

    /// After the tombstone was collected, a blind write starts the key afresh: its context does
    /// not cover the delete's dot.
    #[test]
    fn a_blind_write_after_a_collected_delete_passes() {
        let (mut h, _, _) = put_then_delete();
        let b = h.record_write(K, val("b"), VersionVector::new());
        h.record_ack(b, dot(2, 1));
        h.record_final_read(K, vec![sib(2, 1, "b")], vv(&[(2, 1)]));
        assert_eq!(check(&h), []);
        assert_eq!(check_with(&h, Supersession::Any), []);
    }

    /// Negative control: a delete concurrent with `a` does not replace it, so a store that
    /// collects the key's state with `a` in it lost `a`.
    #[test]
    fn a_put_dropped_with_a_concurrent_delete_is_reported() {
        let mut h = History::new();
        let a = h.record_write(K, val("a"), VersionVector::new());
        h.record_ack(a, dot(1, 1));
        let del = h.record_write(K, None, VersionVector::new());
        h.record_ack(del, dot(2, 1));
        h.record_final_read(K, vec![], VersionVector::new());
        assert_eq!(
            check(&h),
            [Violation::LostWrite {
                key: K.to_vec(),
                write: a,
                dot: dot(1, 1)
            }]
        );
    }

    /// A delete whose reply was lost may have taken effect and had its tombstone collected, so
    /// it supersedes what it covered though nothing of it is observed. Its context does not
    /// count for rule 3: it may never have reached the store.
    #[test]
    fn an_unacknowledged_delete_may_have_been_collected() {
        let mut h = History::new();
        let a = h.record_write(K, val("a"), VersionVector::new());
        h.record_ack(a, dot(1, 1));
        h.record_write(K, None, vv(&[(1, 1)]));
        h.record_final_read(K, vec![], VersionVector::new());
        assert_eq!(check(&h), []);
        h.record_final_read(K, vec![sib(1, 1, "a")], vv(&[(1, 1)]));
        assert_eq!(check(&h), []);
    }

    /// A key read but never written may only be empty.
    #[test]
    fn reads_of_unwritten_keys_must_be_empty() {
        let mut h = History::new();
        h.record_final_read(K, vec![], VersionVector::new());
        assert_eq!(check(&h), []);
        h.record_final_read(K, vec![sib(1, 1, "ghost")], vv(&[(1, 1)]));
        assert_eq!(check(&h).len(), 1);
    }

    /// ASSUMPTIONS, pruning: a correct, pruning store where the strict rule reports a loss and
    /// `Supersession::Any` does not. Write `c` replaces `a` but its reply is lost; replica 3 then
    /// prunes actor 1's entry, so `d`, issued after reading replica 3, covers `c` but not `a`.
    #[test]
    fn pruned_contexts_need_the_lenient_rule() {
        let mut h = History::new();
        let (mut r1, mut r3) = (Versioned::empty(), Versioned::empty());
        let a = h.record_write(K, val("a"), VersionVector::new());
        h.record_ack(a, r1.write(n(1), &VersionVector::new(), val("a")));
        let seen_a = r1.context().clone();
        h.record_write(K, val("c"), seen_a.clone());
        r3.write(n(3), &seen_a, val("c")); // reply lost
        r1.merge(&r3);
        r3.prune(1);
        let seen_c = r3.context().clone();
        assert!(!seen_c.covers(&dot(1, 1)));
        let d = h.record_write(K, val("d"), seen_c.clone());
        h.record_ack(d, r1.write(n(1), &seen_c, val("d")));
        r1.merge(&r3);
        h.record_final_state(K, &r1);
        assert_eq!(values_of(&r1), [val("d")]);

        assert_eq!(
            check(&h),
            [Violation::LostWrite {
                key: K.to_vec(),
                write: a,
                dot: dot(1, 1)
            }]
        );
        assert_eq!(check_with(&h, Supersession::Any), []);
    }

    fn values_of(v: &Versioned) -> Vec<Option<Vec<u8>>> {
        v.siblings().iter().map(|s| s.value.clone()).collect()
    }

    /// The checker against the real versioning code and against a last-write-wins merge, on the
    /// same operations: two replicas take concurrent writes, then sync.
    #[test]
    fn real_versions_pass_and_a_last_write_wins_merge_fails() {
        /// The stored layout of a `Versioned`, to build states the real code would never make.
        #[derive(Serialize)]
        struct Raw {
            context: VersionVector,
            siblings: Vec<Sibling>,
            pruned: u64,
            applied: std::collections::BTreeMap<crate::version::WriteId, Dot>,
        }

        /// Keep only the sibling with the largest (counter, actor), as a timestamp store would.
        fn lww(a: &Versioned, b: &Versioned) -> Versioned {
            let mut all = a.clone();
            all.merge(b);
            let winner = all
                .siblings()
                .iter()
                .max_by_key(|s| (s.dot.counter, s.dot.actor))
                .cloned();
            let raw = Raw {
                context: all.context().clone(),
                siblings: winner.into_iter().collect(),
                pruned: 0,
                applied: std::collections::BTreeMap::new(),
            };
            let bytes = bincode::serde::encode_to_vec(&raw, bincode::config::standard()).unwrap();
            Versioned::decode(&bytes).unwrap()
        }

        let mut h = History::new();
        let (mut r1, mut r2) = (Versioned::empty(), Versioned::empty());
        for (i, (r, actor)) in [(&mut r1, n(1)), (&mut r2, n(2))].into_iter().enumerate() {
            let value = Some(vec![i as u8]);
            let id = h.record_write(K, value.clone(), VersionVector::new());
            let d = r.write(actor, &VersionVector::new(), value);
            h.record_ack(id, d);
        }

        let mut good = r1.clone();
        good.merge(&r2);
        let mut ok = h.clone();
        ok.record_final_state(K, &good);
        assert_eq!(check(&ok), []);

        let bad = lww(&r1, &r2);
        let mut lost = h.clone();
        lost.record_final_state(K, &bad);
        assert_eq!(
            check(&lost),
            [Violation::LostWrite {
                key: K.to_vec(),
                write: WriteId(0),
                dot: dot(1, 1)
            }]
        );
    }
}
