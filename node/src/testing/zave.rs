//! Zave's invariant for Chord rings, which the simulator checks after every delivered message.
//!
//! Zave ("Reasoning about identifier spaces: how to make Chord correct", IEEE TSE 2017, §6)
//! proves her protocol correct by an inductive invariant over the ring's *members* (live nodes
//! that have joined) and their successor lists:
//! - *OneLiveSuccessor*: every member's successor list holds a live node;
//! - *SufficientPrincipals*: at least `r + 1` members are *principals*, members that no
//!   successor list skips. A list `[s1, …, sk]` of member `m` skips every member strictly
//!   inside one of its gaps `(m, s1)`, `(s1, s2)`, …, `(s(k-1), sk)`. These principals are the
//!   ring's stable base: as long as they stand, no failure of fewer than `r` nodes in a row can
//!   split the ring.
//!
//! An empty successor list means "alone" (successor = self), so its one gap `(m, m)` skips
//! every other member: a node that lost all its successors in a ring of many is caught by the
//! second rule.
//!
//! OneLiveSuccessor is checked after every step. SufficientPrincipals holds only inside Zave's
//! model: reliable links and a perfect failure detector. With messages lost, the heartbeat
//! detector may suspect a live node, and dropping it from a successor list legitimately costs a
//! principal; a partition makes two rings. So the checker keeps a *floor* of principals:
//! `r + 1` once a ring of more than `r` members has settled (every member a principal), lowered
//! to what is left when a test itself takes nodes out (a crash or a leave: a principal gone is
//! not the protocol's doing), and none while links are unreliable (message loss or a
//! partition); the floor forms again once the ring has settled on reliable links. A protocol
//! step that brings the principals under the floor, or leaves a member with no live successor,
//! is a violation.

use crate::id::{Id, in_open};
use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

/// The incremental state of the check: members, their lists, and how often each is skipped.
#[derive(Debug, Default)]
pub struct RingCheck {
    /// Successor list length `r`.
    r: usize,
    /// Members and their successor lists, by id.
    lists: BTreeMap<Id, Vec<Id>>,
    /// For every member, how many gaps of successor lists lie over it.
    skips: BTreeMap<Id, u32>,
    /// Members no gap lies over.
    principals: usize,
    /// The principals required now (see the module documentation).
    floor: usize,
    /// Links lose messages or a partition is in force: only OneLiveSuccessor is enforced.
    unreliable: bool,
    /// Until when a message lost before the links became reliable may still be timing out (a
    /// false suspicion then is the loss's doing, not the protocol's): no floor forms before.
    quiet_until: u64,
    /// Steps checked, and of those, steps at which a floor of `r + 1` principals was enforced.
    checked: u64,
    enforced: u64,
}

impl RingCheck {
    /// A check for successor lists of length `r`, with no members yet.
    pub fn new(r: usize) -> RingCheck {
        RingCheck {
            r,
            ..RingCheck::default()
        }
    }

    /// How many members no successor list skips.
    pub fn principals(&self) -> usize {
        self.principals
    }

    /// Steps checked so far, and how many of them enforced a floor of `r + 1` principals.
    pub fn steps(&self) -> (u64, u64) {
        (self.checked, self.enforced)
    }

    /// How many members the ring has.
    pub fn members(&self) -> usize {
        self.lists.len()
    }

    /// Node `id` is now a member with successor list `list` (nearest first), or, with `None`,
    /// not a member (not joined yet, crashed or left).
    pub fn set(&mut self, id: Id, list: Option<Vec<Id>>) {
        if let Some(old) = self.lists.remove(&id) {
            self.count_gaps(id, &old, false);
            let skipped = self.skips.remove(&id).unwrap_or(0);
            if skipped == 0 {
                self.principals -= 1;
            }
        }
        let Some(list) = list else {
            return;
        };
        // A new member: how many gaps of the other lists lie over it already.
        let skipped = self
            .lists
            .iter()
            .map(|(m, l)| gaps(*m, l).filter(|(a, b)| in_open(*a, *b, id)).count() as u32)
            .sum::<u32>();
        self.skips.insert(id, skipped);
        if skipped == 0 {
            self.principals += 1;
        }
        self.count_gaps(id, &list, true);
        self.lists.insert(id, list);
    }

    /// Add (or, with `add` false, remove) the skips of `m`'s list `list` on the other members.
    fn count_gaps(&mut self, m: Id, list: &[Id], add: bool) {
        for (a, b) in gaps(m, list).collect::<Vec<_>>() {
            let inside: Vec<Id> = between(&self.skips, a, b).filter(|x| *x != m).collect();
            for x in inside {
                let n = self.skips.get_mut(&x).expect("a member");
                match (add, *n) {
                    (true, 0) => {
                        *n = 1;
                        self.principals -= 1;
                    }
                    (true, _) => *n += 1,
                    (false, 1) => {
                        *n = 0;
                        self.principals += 1;
                    }
                    (false, _) => *n = n.saturating_sub(1),
                }
            }
        }
    }

    /// A test took nodes out (a crash, a leave): the principals it removed do not count
    /// against the protocol.
    pub fn lowered(&mut self) {
        self.floor = self.floor.min(self.principals);
    }

    /// Whether links are reliable (no message loss, no partition): while they are not, only
    /// OneLiveSuccessor is enforced, and once they are again the floor of principals forms anew
    /// when the ring has settled after `quiet_until`, by when whatever was lost before has
    /// timed out.
    pub fn set_reliable(&mut self, reliable: bool, quiet_until: u64) {
        if self.unreliable == reliable {
            self.unreliable = !reliable;
            self.floor = 0;
            self.quiet_until = quiet_until;
        }
    }

    /// Check the invariant after a protocol step at member `at` (if it is one): its successor
    /// list holds a node for which `live` holds, and the ring has at least the floor of
    /// principals.
    ///
    /// # Errors
    /// What is broken, in words.
    pub fn check(&mut self, at: Id, now: u64, live: impl Fn(Id) -> bool) -> Result<(), String> {
        self.checked += 1;
        if let Some(list) = self.lists.get(&at) {
            if !list.is_empty() && !list.iter().any(|s| live(*s)) {
                return Err(format!(
                    "OneLiveSuccessor: {} has no live node in its successor list {:?}",
                    at.short(),
                    list.iter().map(|s| s.short()).collect::<Vec<_>>()
                ));
            }
        }
        if self.unreliable {
            return Ok(());
        }
        if self.floor > self.r {
            self.enforced += 1;
        }
        if self.principals < self.floor {
            let skipped: Vec<String> = self
                .skips
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(m, _)| m.short())
                .collect();
            return Err(format!(
                "SufficientPrincipals: {} of {} members are principals, at least {} must be \
                 (last step at {}; skipped: {skipped:?}; lists: {})",
                self.principals,
                self.lists.len(),
                self.floor,
                at.short(),
                self.describe()
            ));
        }
        // The stable base forms once a ring of more than `r` members has settled: every member
        // a principal.
        if self.principals > self.r
            && self.principals == self.lists.len()
            && now >= self.quiet_until
        {
            self.floor = self.r + 1;
        }
        Ok(())
    }

    /// Every member's successor list, in ring order.
    fn describe(&self) -> String {
        let lists: Vec<String> = self
            .lists
            .iter()
            .map(|(m, l)| {
                let l: Vec<String> = l.iter().map(|s| s.short()).collect();
                format!("{} → [{}]", m.short(), l.join(" "))
            })
            .collect();
        lists.join("; ")
    }

    /// Check OneLiveSuccessor at every member (after a crash, which can empty anyone's list of
    /// live nodes).
    ///
    /// # Errors
    /// The first member with no live successor.
    pub fn check_all(&mut self, now: u64, live: impl Fn(Id) -> bool) -> Result<(), String> {
        let members: Vec<Id> = self.lists.keys().copied().collect();
        for m in members {
            self.check(m, now, &live)?;
        }
        Ok(())
    }
}

/// The keys of `map` strictly inside `(a, b)` going clockwise (all but `a` when `a == b`).
fn between<V>(map: &BTreeMap<Id, V>, a: Id, b: Id) -> impl Iterator<Item = Id> + '_ {
    let (first, second) = if a < b {
        (map.range((Excluded(a), Excluded(b))), None)
    } else {
        // Wrapping around: past `a` to the top, then from the bottom to `b`.
        (map.range((Excluded(a), Unbounded)), Some(map.range(..b)))
    };
    first.chain(second.into_iter().flatten()).map(|(k, _)| *k)
}

/// The gaps of member `m`'s successor list: `(m, s1)`, `(s1, s2)`, …; `(m, m)` when it is empty.
fn gaps(m: Id, list: &[Id]) -> impl Iterator<Item = (Id, Id)> + '_ {
    let starts = std::iter::once(m).chain(list.iter().copied());
    let ends = list.iter().copied().chain(list.is_empty().then_some(m));
    starts.zip(ends)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 20])
    }

    /// A correct ring of `n` members (ids 10, 20, …) with lists of length `r`.
    fn ring(n: u8, r: usize) -> RingCheck {
        let mut c = RingCheck::new(r);
        let ids: Vec<u8> = (1..=n).map(|k| k * 10).collect();
        for (i, m) in ids.iter().enumerate() {
            let list = (1..=r.min(ids.len() - 1))
                .map(|k| id(ids[(i + k) % ids.len()]))
                .collect();
            c.set(id(*m), Some(list));
        }
        c
    }

    #[test]
    fn a_correct_ring_has_every_member_a_principal_and_passes() {
        let mut c = ring(8, 3);
        assert_eq!((c.members(), c.principals()), (8, 8));
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
    }

    #[test]
    fn a_newcomer_is_skipped_until_the_lists_include_it_and_that_is_allowed() {
        let mut c = ring(8, 3);
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
        // 15 joins between 10 and 20: it copies 20's list; the lists before it still skip it.
        c.set(id(15), Some(vec![id(20), id(30), id(40)]));
        assert_eq!(c.principals(), 8);
        assert_eq!(c.check(id(15), 0, |_| true), Ok(()));
        c.set(id(10), Some(vec![id(15), id(20), id(30)]));
        c.set(id(80), Some(vec![id(10), id(15), id(20)]));
        c.set(id(70), Some(vec![id(80), id(10), id(15)]));
        assert_eq!(c.principals(), 9, "no list skips it any more");
    }

    #[test]
    fn a_list_that_skips_principals_below_the_floor_is_a_violation() {
        let mut c = ring(5, 3);
        assert_eq!(
            c.check(id(10), 0, |_| true),
            Ok(()),
            "floor formed: 4 principals"
        );
        // 10 drops two live successors: 20 and 30 are skipped, 3 principals are left.
        c.set(id(10), Some(vec![id(40), id(50)]));
        let e = c
            .check(id(10), 0, |_| true)
            .expect_err("fewer than r + 1 principals");
        assert!(e.contains("SufficientPrincipals"), "{e}");
    }

    #[test]
    fn an_empty_list_in_a_ring_of_many_skips_everyone_else() {
        let mut c = ring(6, 3);
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
        c.set(id(30), Some(Vec::new()));
        assert_eq!(c.principals(), 1);
        assert!(c.check(id(30), 0, |_| true).is_err());
    }

    #[test]
    fn a_member_whose_successors_are_all_dead_is_a_violation() {
        let mut c = ring(6, 2);
        let dead = [id(20), id(30)];
        let e = c
            .check_all(0, |s| !dead.contains(&s))
            .expect_err("10's list is [20, 30]");
        assert!(e.contains("OneLiveSuccessor"), "{e}");
    }

    #[test]
    fn no_floor_forms_until_what_was_lost_before_the_links_healed_has_timed_out() {
        let mut c = RingCheck::new(3);
        c.set_reliable(false, 0);
        let mut c2 = ring(5, 3);
        std::mem::swap(&mut c.lists, &mut c2.lists);
        std::mem::swap(&mut c.skips, &mut c2.skips);
        c.principals = c2.principals;
        c.set_reliable(true, 1_000);
        assert_eq!(c.check(id(10), 500, |_| true), Ok(()));
        // A suspicion from a message lost before the links healed drops a principal.
        c.set(id(10), Some(vec![id(40), id(50)]));
        assert_eq!(
            c.check(id(10), 900, |_| true),
            Ok(()),
            "still within the horizon"
        );
        c.set(id(10), Some(vec![id(20), id(30), id(40)]));
        assert_eq!(
            c.check(id(10), 1_000, |_| true),
            Ok(()),
            "settled after it: floor forms"
        );
        c.set(id(10), Some(vec![id(40), id(50)]));
        assert!(c.check(id(10), 1_100, |_| true).is_err());
    }

    #[test]
    fn crashes_lower_the_floor_and_unreliable_links_suspend_the_principals() {
        let mut c = ring(5, 3);
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
        c.set(id(20), None);
        c.lowered();
        assert_eq!(
            c.check(id(10), 0, |_| true),
            Ok(()),
            "4 principals after a crash"
        );
        c.set_reliable(false, 0);
        c.set(id(10), Some(Vec::new()));
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
        c.set(id(10), Some(vec![id(30)]));
        assert!(
            c.check(id(10), 0, |s| s != id(30)).is_err(),
            "still one live successor"
        );
        c.set_reliable(true, 0);
        assert_eq!(
            c.check(id(10), 0, |_| true),
            Ok(()),
            "floor forms again after the heal"
        );
        c.set(id(10), Some(vec![id(30), id(40), id(50)]));
        assert_eq!(c.check(id(10), 0, |_| true), Ok(()));
        assert_eq!(c.principals(), 4);
    }
}
