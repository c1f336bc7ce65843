//! SESSION CHECKER
//!
//! Tests record every operation that several client sessions did against the store, as a
//! [`SessionHistory`], and ask [`check_sessions`] whether the four session guarantees of Terry
//! et al., "Session Guarantees for Weakly Consistent Replicated Data" (PDIS 1994), held: read
//! your writes, monotonic reads, monotonic writes and writes follow reads (§3 of the paper),
//! together with the cross-key "bulletin board" rule of its §2, that a reply is never visible
//! without the post it answers. The lost-write checker in [`super::history`] judges what
//! survives at the end; this one judges what every session saw along the way.
//!
//! HISTORIES
//!
//! A history is a list of operations ([`Op`]), each a read or a write of one key by one session,
//! with the logical times it was invoked and completed and its [`Outcome`]. A key holds a set of
//! concurrent values (siblings), so a read returns a set of values, the empty set when the key
//! is absent. There are no deletes in these histories: a delete would make "the key is absent"
//! a legitimate answer after a write, and nothing here could tell it from a lost write.
//!
//! Every written value is unique (the tests' workloads make it so; a retry writes a fresh
//! value), so a value returned by a read names the one write that wrote it. That is what keeps
//! the check polynomial: with unique values, the order a history must be explained by is fixed
//! by the history itself, and checking it needs no search (Bouajjani, Enea, Guerraoui and
//! Hamza, "On Verifying Causal Consistency", POPL 2017, §4). Two writes of one key with the
//! same value are reported as [`SessionViolation::DuplicateValue`], a bug in the test.
//!
//! A write that FAILED was definitely not applied; one that is UNKNOWN (a timeout, a partial
//! quorum) or still PENDING when the history is checked may or may not have been. A read whose
//! value no write of that key that may have taken effect wrote (including a failed write's
//! value, or a value written to another key) is a [`SessionViolation::Phantom`].
//!
//! SESSIONS
//!
//! A session is sequential: its operations are ordered by invocation time (ties by [`OpId`],
//! the order they were recorded), and each must complete before the next is invoked. One that
//! does not is reported as [`SessionViolation::Overlapping`] rather than panicking in the
//! recorder, because only the whole history shows it; the rest of that session is still judged
//! in invocation order, so other reports about it may be artifacts of the overlap. For an op `o`
//! of session `s`, "before `o`" means the ops of `s` invoked before `o`. No other use is made of
//! time: the guarantees are about what each session saw, not about real-time order.
//!
//! OBSERVED AND CAUSAL PAST
//!
//! - OBSERVED(s, before o): for each earlier op of `s`, the values an Ok read returned (of its
//!   key), and `s`'s own Ok writes. An Unknown or Failed own write is not observed; if a later
//!   read returns it, it is observed from then on.
//! - The causal past of a write `w` by `s`, `past(w)`: the writes whose values `s` observed
//!   before `w`, plus their pasts, transitively. It is fixed when `w` is invoked. `x → w` means
//!   `x ∈ past(w)`; it crosses keys.
//! - The direct order of one key, `x ⇒ w`: `x` and `w` write the same key and `w`'s session
//!   observed `x` before `w`, or transitively `x ⇒ y ⇒ w`, all of that key. This is what a
//!   per-key version context can express, and `x ⇒ w` implies `x → w`.
//! - MUST-SEE(s, o, k): every write of key `k` that is in OBSERVED(s, before o) or in the past
//!   of an observed write. Each carries the reason `s` must see it, which names the guarantee a
//!   read that misses it breaks: [`Guarantee::ReadYourWrites`] if it is `s`'s own Ok write;
//!   else [`Guarantee::MonotonicReads`] if an earlier read of `s` returned it; else
//!   [`Guarantee::WritesFollowReads`], inherited through the past of something `s` observed
//!   (the reply `s` read on another key, whose writer had read the post).
//!
//! THE RULES
//!
//! 1. No going back in time: an Ok read of key `k` by `s` returning the set `V` must, for every
//!    `w` in MUST-SEE(s, o, k), return `w` itself or a successor of it: some `u ∈ V` with
//!    `u = w` or `w → u`. Otherwise it is a [`SessionViolation::StaleRead`] under `w`'s reason.
//!    An empty answer after `s` observed anything of `k` is one too. So is returning a value
//!    `u` that a must-see `w` replaced (`u ⇒ w`) without `w` itself, whatever else `V` holds: a
//!    successor of `w` across keys beside it does not make the replaced value current again.
//!    A read is reported once per guarantee it breaks, naming the missing write `s` came to
//!    know last for that reason.
//! 2. Ordered writes are never siblings: an Ok read (by any session) returning two values `w`
//!    and `u` with `w ⇒ u` is a [`SessionViolation::OrderedSiblings`]: `u`'s writer had seen
//!    `w` and replaced it. The guarantee is [`Guarantee::MonotonicWrites`] when both are by one
//!    session and `w` was that session's own Ok write before `u`, else writes follow reads.
//!
//! A history can also be impossible in a way none of the four names: a read that returned a
//! value whose write causally follows the read itself (the value came out of thin air, or the
//! recorder mixed up its sessions). That is a [`SessionViolation::CausalCycle`].
//!
//! ALGORITHM AND COST
//!
//! Each session keeps its running causal past as an append-only log of write indices with a
//! position map, so the past of a write is just a prefix length of its session's log:
//! `x ∈ past(w)` is one lookup, and a session absorbing `past(w)` copies only the part of the
//! writer's log it has not absorbed yet (one cursor per pair of sessions), so over a whole
//! history each entry of each log is copied at most once per session. The direct order is kept
//! the same way per session and key. Pasts are transitively closed, so rule 1 only needs the
//! latest must-see writes (the frontier, an antichain of `→`) per session and key; the whole
//! must-see list is walked only for a read that fails, to name the guarantees it breaks.
//!
//! Sessions are replayed each in its own order; a read waits until the writes of the values it
//! returned have been replayed, so that their pasts are known, whatever the recorded times say.
//! If every unfinished session waits, the waits form a cycle: some read returned a value from
//! its own causal future, reported as a causal cycle and then taken without its past.
//!
//! With `S` sessions, `W` writes and `R` reads returning `V` values each, the cost is about
//! `O(S·W + R·(F·V + V²))` map operations, `F` the frontier size (the concurrent writes of a key,
//! usually a handful). A 50 000-op history over 20 sessions and 100 keys, with up to a dozen
//! siblings per key, checks in 1 to 2 s in a debug build and about 0.25 s optimised (the
//! `a_generated_history_of_50k_ops_*` tests print the time). Memory is dense: each session
//! keeps a position per write of the history, so sessions times writes entries.
//!
//! CAVEATS
//!
//! - A read's duplicated values (one write's value twice) are taken once; the lost-write
//!   checker reports duplication.
//! - An Unknown write that a session never observes is never required of anyone, even if it did
//!   take effect; it only counts once some read returns it.
//! - A sibling store may legitimately keep `w` and `u` as siblings when `w → u` only across
//!   keys (`u`'s writer never saw `w` itself), so rule 2 uses `⇒`, not `→`. Rule 1 uses `→`:
//!   a session that saw the reply must see the post or something that replaced it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Which client session an operation belongs to. Any numbers will do; they need not be dense.
pub type SessionId = usize;

/// Which operation of a [`SessionHistory`]: its position in [`SessionHistory::ops`], the order
/// it was recorded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}", self.0)
    }
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Invoked and not yet completed. At check time it counts as [`Outcome::Unknown`].
    Pending,
    /// Completed: a read's values are known; a write was acknowledged.
    Ok,
    /// Definitely not applied: the store refused before applying anything.
    Failed,
    /// May or may not have been applied: a timeout, a partial quorum.
    Unknown,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read the key's siblings.
    Read,
    /// Write a value, unique in the history, to the key.
    Write {
        /// The value written.
        value: Vec<u8>,
    },
}

/// One operation of one session.
#[derive(Clone, Debug)]
pub struct Op {
    /// The session that did it.
    pub session: SessionId,
    /// The key it read or wrote.
    pub key: Vec<u8>,
    /// Read or write.
    pub kind: OpKind,
    /// The logical time it was invoked.
    pub invoked: u64,
    /// The logical time it completed, failed or was given up on; `None` while pending.
    pub completed: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The siblings an Ok read returned (empty: the key was absent). Empty for other ops.
    pub values: Vec<Vec<u8>>,
}

/// What client sessions did to a store, for [`check_sessions`]. Record an op when it is
/// invoked and again when it ends.
#[derive(Clone, Debug, Default)]
pub struct SessionHistory {
    ops: Vec<Op>,
}

impl SessionHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `session` invoked a read of `key` at time `at`.
    pub fn invoke_read(&mut self, session: SessionId, key: &[u8], at: u64) -> OpId {
        self.invoke(session, key, OpKind::Read, at)
    }

    /// Record that `session` invoked a write of `value` to `key` at time `at`.
    pub fn invoke_write(&mut self, session: SessionId, key: &[u8], value: &[u8], at: u64) -> OpId {
        let kind = OpKind::Write {
            value: value.to_vec(),
        };
        self.invoke(session, key, kind, at)
    }

    fn invoke(&mut self, session: SessionId, key: &[u8], kind: OpKind, at: u64) -> OpId {
        self.ops.push(Op {
            session,
            key: key.to_vec(),
            kind,
            invoked: at,
            completed: None,
            outcome: Outcome::Pending,
            values: Vec::new(),
        });
        OpId(self.ops.len() - 1)
    }

    /// Record that read `op` completed at `at` and returned the siblings `values`.
    ///
    /// # Panics
    /// If `op` is not a pending read of this history, or `at` is before its invocation: bugs in
    /// the test that records.
    pub fn complete_read(&mut self, op: OpId, at: u64, values: Vec<Vec<u8>>) {
        let o = self.end(op, at, Outcome::Ok);
        assert!(
            o.kind == OpKind::Read,
            "{op} is a write, completed as a read"
        );
        o.values = values;
    }

    /// Record that the store acknowledged write `op` at `at`.
    ///
    /// # Panics
    /// If `op` is not a pending write of this history, or `at` is before its invocation.
    pub fn complete_write(&mut self, op: OpId, at: u64) {
        let o = self.end(op, at, Outcome::Ok);
        assert!(
            o.kind != OpKind::Read,
            "{op} is a read, completed as a write"
        );
    }

    /// Record that `op` (a read or a write) definitely failed at `at`: nothing was applied.
    ///
    /// # Panics
    /// If `op` is not a pending op of this history, or `at` is before its invocation.
    pub fn fail(&mut self, op: OpId, at: u64) {
        self.end(op, at, Outcome::Failed);
    }

    /// Record that the client gave up on `op` at `at` without knowing whether it was applied.
    ///
    /// # Panics
    /// If `op` is not a pending op of this history, or `at` is before its invocation.
    pub fn unknown(&mut self, op: OpId, at: u64) {
        self.end(op, at, Outcome::Unknown);
    }

    fn end(&mut self, op: OpId, at: u64, outcome: Outcome) -> &mut Op {
        let count = self.ops.len();
        let o = self
            .ops
            .get_mut(op.0)
            .unwrap_or_else(|| panic!("no {op} in a history of {count}"));
        assert!(
            o.outcome == Outcome::Pending,
            "{op} ended twice: it is already {:?}",
            o.outcome
        );
        assert!(
            at >= o.invoked,
            "{op} ended at {at}, before it was invoked at {}",
            o.invoked
        );
        o.completed = Some(at);
        o.outcome = outcome;
        o
    }

    /// All ops, in the order they were recorded ([`OpId`] order).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Counts of sessions, reads, writes and outcomes, for a test to print.
    pub fn stats(&self) -> HistoryStats {
        let mut stats = HistoryStats::default();
        let mut sessions = BTreeSet::new();
        for o in &self.ops {
            sessions.insert(o.session);
            match o.kind {
                OpKind::Read => stats.reads += 1,
                OpKind::Write { .. } => stats.writes += 1,
            }
            match o.outcome {
                Outcome::Pending => stats.pending += 1,
                Outcome::Ok => stats.ok += 1,
                Outcome::Failed => stats.failed += 1,
                Outcome::Unknown => stats.unknown += 1,
            }
        }
        stats.sessions = sessions.len();
        stats
    }
}

/// What a [`SessionHistory`] holds, from [`SessionHistory::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Distinct sessions.
    pub sessions: usize,
    /// Read ops.
    pub reads: usize,
    /// Write ops.
    pub writes: usize,
    /// Ops that completed.
    pub ok: usize,
    /// Ops that definitely failed.
    pub failed: usize,
    /// Ops given up on, outcome unknown.
    pub unknown: usize,
    /// Ops still pending (checked as unknown).
    pub pending: usize,
}

impl fmt::Display for HistoryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions, {} reads, {} writes: {} ok, {} failed, {} unknown, {} pending",
            self.sessions,
            self.reads,
            self.writes,
            self.ok,
            self.failed,
            self.unknown,
            self.pending
        )
    }
}

pub use crate::session::Guarantee;

/// Something [`check_sessions`] found wrong with a history. Keys and values are raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionViolation {
    /// Rule 1: a read returned neither a write the session must see nor a successor of it.
    StaleRead {
        /// Why the session must see the missing write.
        guarantee: Guarantee,
        /// The reading session.
        session: SessionId,
        /// The read.
        read: OpId,
        /// The key read.
        key: Vec<u8>,
        /// The value of the missing write.
        missing: Vec<u8>,
        /// The missing write.
        write: OpId,
        /// What the read returned.
        returned: Vec<Vec<u8>>,
    },
    /// Rule 2: a read returned as siblings two writes of which the later's writer had seen the
    /// earlier (`earlier ⇒ later`).
    OrderedSiblings {
        /// Monotonic writes if one session wrote both, else writes follow reads.
        guarantee: Guarantee,
        /// The reading session.
        session: SessionId,
        /// The read.
        read: OpId,
        /// The key read.
        key: Vec<u8>,
        /// The write that should have been replaced.
        earlier: OpId,
        /// Its value.
        earlier_value: Vec<u8>,
        /// The write that replaced it.
        later: OpId,
        /// Its value.
        later_value: Vec<u8>,
    },
    /// A read returned a value that no write of that key which may have taken effect wrote.
    Phantom {
        /// The reading session.
        session: SessionId,
        /// The read.
        read: OpId,
        /// The key read.
        key: Vec<u8>,
        /// The unexplained value.
        value: Vec<u8>,
    },
    /// A session invoked an op before its previous one completed; sessions must be sequential.
    Overlapping {
        /// The session.
        session: SessionId,
        /// The op still running (or never completed).
        earlier: OpId,
        /// The op invoked meanwhile.
        later: OpId,
    },
    /// A read returned a value whose write causally follows that very read.
    CausalCycle {
        /// The reading session.
        session: SessionId,
        /// The read.
        read: OpId,
        /// The key read.
        key: Vec<u8>,
        /// The value from the read's causal future.
        value: Vec<u8>,
        /// The write of it.
        write: OpId,
    },
    /// Two writes that may have taken effect wrote the same value to one key, so a read of it
    /// cannot name its write: the test broke the uniqueness the checker relies on. Reads of the
    /// value are taken to name the first.
    DuplicateValue {
        /// The key.
        key: Vec<u8>,
        /// The value written twice.
        value: Vec<u8>,
        /// The first write of it.
        first: OpId,
        /// A later write of it.
        second: OpId,
    },
}

/// Bytes as lossy UTF-8, quoted.
fn text(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// A set of values as a bracketed list of [`text`].
fn texts(values: &[Vec<u8>]) -> String {
    let parts: Vec<String> = values.iter().map(|v| text(v)).collect();
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for SessionViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionViolation::StaleRead {
                guarantee,
                session,
                read,
                key,
                missing,
                write,
                returned,
            } => {
                let why = match guarantee {
                    Guarantee::ReadYourWrites => "its own acknowledged write",
                    Guarantee::MonotonicReads => "which it had already read",
                    _ => "which something it had seen depends on",
                };
                write!(
                    f,
                    "{guarantee}: session {session}, {read} read key {} = {}, missing {} \
                     ({write}), {why}, and no successor of it",
                    text(key),
                    texts(returned),
                    text(missing)
                )
            }
            SessionViolation::OrderedSiblings {
                guarantee,
                session,
                read,
                key,
                earlier,
                earlier_value,
                later,
                later_value,
            } => write!(
                f,
                "{guarantee}: session {session}, {read} read key {} with siblings {} ({earlier}) \
                 and {} ({later}), but the later was written after seeing the earlier",
                text(key),
                text(earlier_value),
                text(later_value)
            ),
            SessionViolation::Phantom {
                session,
                read,
                key,
                value,
            } => write!(
                f,
                "phantom: session {session}, {read} read key {} = {}, which no write of that key \
                 that may have taken effect wrote",
                text(key),
                text(value)
            ),
            SessionViolation::Overlapping {
                session,
                earlier,
                later,
            } => write!(
                f,
                "overlapping: session {session} invoked {later} before {earlier} completed; a \
                 session must be sequential"
            ),
            SessionViolation::CausalCycle {
                session,
                read,
                key,
                value,
                write,
            } => write!(
                f,
                "causal cycle: session {session}, {read} read key {} = {}, written by {write}, \
                 which causally follows that read",
                text(key),
                text(value)
            ),
            SessionViolation::DuplicateValue {
                key,
                value,
                first,
                second,
            } => write!(
                f,
                "duplicate value: key {}: {first} and {second} both wrote {}; values must be \
                 unique",
                text(key),
                text(value)
            ),
        }
    }
}

/// Judge `history` by the rules in the module docs. Returns every violation, in the order of
/// the ops they concern ([`OpId`] order; for an overlap or a duplicate, the later op). An empty
/// result means every session got all four guarantees.
pub fn check_sessions(history: &SessionHistory) -> Vec<SessionViolation> {
    Checker::new(history).run()
}

/// No position: the write is not in the log.
const NONE: u32 = u32::MAX;

/// A write that may have taken effect (not Failed), by its dense index.
struct WriteInfo<'h> {
    op: OpId,
    /// Dense key index.
    key: usize,
    /// Index among the writes of its key.
    local: usize,
    /// Dense session index.
    session: usize,
    /// Position in its session's op list.
    seq: usize,
    /// Acknowledged, hence observed by its own session.
    ok: bool,
    value: &'h [u8],
    /// Its session's view of its key.
    view: usize,
    /// `past(w)` is this long a prefix of its session's past log; `None` until replayed.
    past_len: Option<usize>,
    /// Its direct past is this long a prefix of its view's direct log; `None` until replayed.
    direct_len: Option<usize>,
}

/// What one session knows about one key.
struct KeyView {
    /// MUST-SEE for this key, in the order the session came to know them.
    must: Vec<usize>,
    /// The maximal elements of `must` under `→`: enough to check rule 1.
    frontier: Vec<usize>,
    /// The writes of this key that the session's next write of it directly follows.
    direct: Vec<usize>,
    /// Per write of the key (by its index among them): its position in `direct`, or [`NONE`].
    direct_pos: Vec<u32>,
    /// Per dense session: how much of that session's `direct` log for this key was absorbed.
    direct_absorbed: Vec<usize>,
}

/// A session's replay state.
struct SessionState {
    id: SessionId,
    /// Its ops in invocation order.
    ops: Vec<OpId>,
    /// How many of them have been replayed.
    head: usize,
    /// Its running causal past: every write observed or in the past of one observed.
    past: Vec<usize>,
    /// Per write: its position in `past`, or [`NONE`]. Dense: sessions times writes entries.
    past_pos: Vec<u32>,
    /// Per write in `past`: the strongest reason so far why the session must see it.
    why: Vec<Guarantee>,
    /// Per dense session: how much of that session's `past` log has been absorbed.
    absorbed: Vec<usize>,
}

/// An Ok read's returned values, resolved to dense write indices.
struct Resolved {
    key: usize,
    writes: Vec<usize>,
}

struct Checker<'h> {
    history: &'h SessionHistory,
    writes: Vec<WriteInfo<'h>>,
    /// Per dense key: how many writes it has.
    key_writes: Vec<usize>,
    /// Per op: its dense write index, if it is a write that may have taken effect.
    write_of: Vec<Option<usize>>,
    /// Per op: its resolved values, if it is an Ok read.
    reads: Vec<Option<Resolved>>,
    sessions: Vec<SessionState>,
    views: Vec<KeyView>,
    /// (dense session, dense key) to its index in `views`.
    view_of: HashMap<(usize, usize), usize>,
    found: Vec<(OpId, SessionViolation)>,
}

impl<'h> Checker<'h> {
    fn new(history: &'h SessionHistory) -> Self {
        let ops = &history.ops;
        let mut found = Vec::new();

        let mut by_session: BTreeMap<SessionId, Vec<OpId>> = BTreeMap::new();
        for (i, o) in ops.iter().enumerate() {
            by_session.entry(o.session).or_default().push(OpId(i));
        }
        let mut dense = HashMap::new();
        let mut seq = vec![0; ops.len()];
        let mut sessions = Vec::new();
        for (d, (id, mut list)) in by_session.into_iter().enumerate() {
            list.sort_by_key(|&op| (ops[op.0].invoked, op));
            for (i, pair) in list.windows(2).enumerate() {
                let (a, b) = (&ops[pair[0].0], &ops[pair[1].0]);
                if a.completed.is_none_or(|c| b.invoked < c) {
                    found.push((
                        pair[1],
                        SessionViolation::Overlapping {
                            session: id,
                            earlier: pair[0],
                            later: pair[1],
                        },
                    ));
                }
                seq[pair[1].0] = i + 1;
            }
            dense.insert(id, d);
            sessions.push(SessionState {
                id,
                ops: list,
                head: 0,
                past: Vec::new(),
                past_pos: Vec::new(),
                why: Vec::new(),
                absorbed: Vec::new(),
            });
        }

        let mut key_ids: HashMap<&'h [u8], usize> = HashMap::new();
        let mut key_of = |key: &'h [u8]| {
            let next = key_ids.len();
            *key_ids.entry(key).or_insert(next)
        };
        let mut writes = Vec::new();
        let mut key_writes: Vec<usize> = Vec::new();
        let mut write_of = vec![None; ops.len()];
        let mut by_value: HashMap<(usize, &'h [u8]), usize> = HashMap::new();
        for (i, o) in ops.iter().enumerate() {
            let OpKind::Write { value } = &o.kind else {
                continue;
            };
            if o.outcome == Outcome::Failed {
                continue;
            }
            let key = key_of(&o.key);
            if let Some(&first) = by_value.get(&(key, value.as_slice())) {
                let first: &WriteInfo<'_> = &writes[first];
                found.push((
                    OpId(i),
                    SessionViolation::DuplicateValue {
                        key: o.key.clone(),
                        value: value.clone(),
                        first: first.op,
                        second: OpId(i),
                    },
                ));
                continue;
            }
            if key_writes.len() <= key {
                key_writes.resize(key + 1, 0);
            }
            by_value.insert((key, value.as_slice()), writes.len());
            write_of[i] = Some(writes.len());
            writes.push(WriteInfo {
                op: OpId(i),
                key,
                local: key_writes[key],
                session: dense[&o.session],
                seq: seq[i],
                ok: o.outcome == Outcome::Ok,
                value,
                view: 0,
                past_len: None,
                direct_len: None,
            });
            key_writes[key] += 1;
        }

        let mut reads = Vec::with_capacity(ops.len());
        for (i, o) in ops.iter().enumerate() {
            if o.kind != OpKind::Read || o.outcome != Outcome::Ok {
                reads.push(None);
                continue;
            }
            let key = key_of(&o.key);
            let mut resolved = Resolved {
                key,
                writes: Vec::new(),
            };
            for v in &o.values {
                match by_value.get(&(key, v.as_slice())) {
                    Some(&w) if !resolved.writes.contains(&w) => resolved.writes.push(w),
                    Some(_) => {}
                    None => found.push((
                        OpId(i),
                        SessionViolation::Phantom {
                            session: o.session,
                            read: OpId(i),
                            key: o.key.clone(),
                            value: v.clone(),
                        },
                    )),
                }
            }
            reads.push(Some(resolved));
        }
        key_writes.resize(key_ids.len(), 0);

        for s in &mut sessions {
            s.absorbed = vec![0; dense.len()];
            s.past_pos = vec![NONE; writes.len()];
            s.why = vec![Guarantee::WritesFollowReads; writes.len()];
        }
        let mut checker = Checker {
            history,
            writes,
            key_writes,
            write_of,
            reads,
            sessions,
            views: Vec::new(),
            view_of: HashMap::new(),
            found,
        };
        for w in 0..checker.writes.len() {
            let (s, key) = (checker.writes[w].session, checker.writes[w].key);
            checker.writes[w].view = checker.view(s, key);
        }
        checker
    }

    /// The index of dense session `s`'s view of dense `key`, made empty if it has none yet.
    fn view(&mut self, s: usize, key: usize) -> usize {
        let next = self.views.len();
        let v = *self.view_of.entry((s, key)).or_insert(next);
        if v == next {
            self.views.push(KeyView {
                must: Vec::new(),
                frontier: Vec::new(),
                direct: Vec::new(),
                direct_pos: vec![NONE; self.key_writes[key]],
                direct_absorbed: vec![0; self.sessions.len()],
            });
        }
        v
    }

    /// Replay every session, each in its own order, a read only once the writes it returned
    /// have been replayed; break a deadlock at a read on the wait cycle.
    fn run(mut self) -> Vec<SessionViolation> {
        loop {
            let mut progressed = false;
            let mut waiting = false;
            for s in 0..self.sessions.len() {
                while let Some(&op) = self.sessions[s].ops.get(self.sessions[s].head) {
                    if self.waits_for(op).is_some() {
                        waiting = true;
                        break;
                    }
                    self.step(s, op);
                    self.sessions[s].head += 1;
                    progressed = true;
                }
            }
            if !waiting {
                break;
            }
            if !progressed {
                let s = self.on_cycle();
                let op = self.sessions[s].ops[self.sessions[s].head];
                self.step(s, op);
                self.sessions[s].head += 1;
            }
        }
        let mut found = self.found;
        found.sort_by_key(|(op, _)| *op);
        found.into_iter().map(|(_, v)| v).collect()
    }

    /// The dense session whose unreplayed write the read `op` returned, if any.
    fn waits_for(&self, op: OpId) -> Option<usize> {
        let r = self.reads[op.0].as_ref()?;
        r.writes
            .iter()
            .map(|&w| &self.writes[w])
            .find(|w| w.past_len.is_none())
            .map(|w| w.session)
    }

    /// With every unfinished session waiting, one whose wait is on a cycle. Each waiting session
    /// waits for an unfinished one (a finished session has replayed all its writes), so
    /// following the waits from any of them must come round.
    fn on_cycle(&self) -> usize {
        let head = |s: usize| self.sessions[s].ops.get(self.sessions[s].head).copied();
        let mut s = (0..self.sessions.len())
            .find(|&s| head(s).is_some())
            .unwrap_or_default();
        let mut seen = vec![false; self.sessions.len()];
        while !seen[s] {
            seen[s] = true;
            match head(s).and_then(|op| self.waits_for(op)) {
                Some(next) => s = next,
                None => break,
            }
        }
        s
    }

    /// Replay `op`, the next op of dense session `s`.
    fn step(&mut self, s: usize, op: OpId) {
        match &self.history.ops[op.0].kind {
            OpKind::Write { .. } => {
                let Some(w) = self.write_of[op.0] else {
                    return;
                };
                let direct_len = self.views[self.writes[w].view].direct.len();
                self.writes[w].past_len = Some(self.sessions[s].past.len());
                self.writes[w].direct_len = Some(direct_len);
                if self.writes[w].ok {
                    self.observe(s, w, Guarantee::ReadYourWrites);
                }
            }
            OpKind::Read => {
                let Some(r) = self.reads[op.0].as_ref() else {
                    return;
                };
                let (key, values) = (r.key, r.writes.clone());
                for &u in &values {
                    let w = &self.writes[u];
                    if w.past_len.is_none() {
                        self.found.push((
                            op,
                            SessionViolation::CausalCycle {
                                session: self.sessions[s].id,
                                read: op,
                                key: self.history.ops[op.0].key.clone(),
                                value: w.value.to_vec(),
                                write: w.op,
                            },
                        ));
                    }
                }
                let view = self.view(s, key);
                self.rule_1(s, op, view, &values);
                self.rule_2(op, &values);
                for u in values {
                    self.observe(s, u, Guarantee::MonotonicReads);
                }
            }
        }
    }

    /// `x → f`: `x` is in the causal past of `f`.
    fn in_past(&self, x: usize, f: usize) -> bool {
        let w = &self.writes[f];
        w.past_len.is_some_and(|len| {
            let p = self.sessions[w.session].past_pos[x];
            p != NONE && (p as usize) < len
        })
    }

    /// `x ⇒ f`, for two writes of one key: `x` is before `f` in the direct order of the key.
    fn in_direct(&self, x: usize, f: usize) -> bool {
        let w = &self.writes[f];
        w.direct_len.is_some_and(|len| {
            let p = self.views[w.view].direct_pos[self.writes[x].local];
            p != NONE && (p as usize) < len
        })
    }

    /// Whether returning `values` shows `w` or a successor of it.
    fn shows(&self, w: usize, values: &[usize]) -> bool {
        values.iter().any(|&u| u == w || self.in_past(w, u))
    }

    /// Rule 1 for read `op` of dense session `s`, through its `view` of the key, returning
    /// `values`.
    fn rule_1(&mut self, s: usize, op: OpId, view: usize, values: &[usize]) {
        let history = self.history;
        let v = &self.views[view];
        // A returned value that a must-see write replaced (`u ⇒ w`) came back: the read shows
        // a state older than `w`, whatever else it shows.
        let mut latest: BTreeMap<Guarantee, usize> = BTreeMap::new();
        for &w in &v.must {
            if !values.contains(&w) && values.iter().any(|&u| self.in_direct(u, w)) {
                latest.insert(self.sessions[s].why[w], w);
            }
        }
        if latest.is_empty() && v.frontier.iter().all(|&f| self.shows(f, values)) {
            return;
        }
        for &w in &v.must {
            if !self.shows(w, values) {
                latest.insert(self.sessions[s].why[w], w);
            }
        }
        let read = &history.ops[op.0];
        for (guarantee, w) in latest {
            let w = &self.writes[w];
            self.found.push((
                op,
                SessionViolation::StaleRead {
                    guarantee,
                    session: read.session,
                    read: op,
                    key: read.key.clone(),
                    missing: w.value.to_vec(),
                    write: w.op,
                    returned: read.values.clone(),
                },
            ));
        }
    }

    /// Rule 2 for read `op` returning `values`.
    fn rule_2(&mut self, op: OpId, values: &[usize]) {
        let history = self.history;
        let read = &history.ops[op.0];
        for &a in values {
            for &b in values {
                if a == b || !self.in_direct(a, b) {
                    continue;
                }
                let (wa, wb) = (&self.writes[a], &self.writes[b]);
                let guarantee = if wa.session == wb.session && wa.ok && wa.seq < wb.seq {
                    Guarantee::MonotonicWrites
                } else {
                    Guarantee::WritesFollowReads
                };
                self.found.push((
                    op,
                    SessionViolation::OrderedSiblings {
                        guarantee,
                        session: read.session,
                        read: op,
                        key: read.key.clone(),
                        earlier: wa.op,
                        earlier_value: wa.value.to_vec(),
                        later: wb.op,
                        later_value: wb.value.to_vec(),
                    },
                ));
            }
        }
    }

    /// Session `s` observed write `w` itself (read it, or wrote it and was acknowledged), for
    /// reason `why`: take `w` and its past into the session's past, and `w` and its direct past
    /// into the session's direct order for `w`'s key.
    fn observe(&mut self, s: usize, w: usize, why: Guarantee) {
        let (t, key) = (self.writes[w].session, self.writes[w].key);
        // The session's own writes' pasts are prefixes of its own logs, already there.
        if let Some(len) = self.writes[w].past_len
            && t != s
        {
            let from = self.sessions[s].absorbed[t];
            if len > from {
                let new = self.sessions[t].past[from..len].to_vec();
                self.sessions[s].absorbed[t] = len;
                for x in new {
                    self.add_past(s, x, Guarantee::WritesFollowReads);
                }
            }
        }
        self.add_past(s, w, why);

        let mine = self.view(s, key);
        if let Some(len) = self.writes[w].direct_len
            && t != s
        {
            let from = self.views[mine].direct_absorbed[t];
            if len > from {
                let new = self.views[self.writes[w].view].direct[from..len].to_vec();
                self.views[mine].direct_absorbed[t] = len;
                for x in new {
                    self.add_direct(mine, x);
                }
            }
        }
        self.add_direct(mine, w);
    }

    /// Put `x` into the causal past of session `s`, or strengthen its reason.
    fn add_past(&mut self, s: usize, x: usize, why: Guarantee) {
        if self.sessions[s].past_pos[x] != NONE {
            let old = &mut self.sessions[s].why[x];
            *old = (*old).min(why);
            return;
        }
        let view = self.view(s, self.writes[x].key);
        let frontier = &self.views[view].frontier;
        let dominated = frontier.iter().any(|&f| self.in_past(x, f));
        let kept: Vec<usize> = if dominated {
            Vec::new()
        } else {
            frontier
                .iter()
                .copied()
                .filter(|&f| !self.in_past(f, x))
                .collect()
        };
        let me = &mut self.sessions[s];
        me.past_pos[x] = position(me.past.len());
        me.past.push(x);
        me.why[x] = why;
        let v = &mut self.views[view];
        v.must.push(x);
        if !dominated {
            v.frontier = kept;
            v.frontier.push(x);
        }
    }

    /// Put `x` into `view`'s direct order, if not there yet.
    fn add_direct(&mut self, view: usize, x: usize) {
        let local = self.writes[x].local;
        let v = &mut self.views[view];
        if v.direct_pos[local] == NONE {
            v.direct_pos[local] = position(v.direct.len());
            v.direct.push(x);
        }
    }
}

/// A log position as stored. Logs hold at most one entry per write of the history.
///
/// # Panics
/// With four billion writes or more, which no test can hold in memory.
fn position(len: usize) -> u32 {
    match u32::try_from(len) {
        Ok(p) if p != NONE => p,
        _ => panic!("a history of {len} writes is too long to check"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A history built one atomic op at a time on a ticking clock.
    #[derive(Default)]
    struct H {
        h: SessionHistory,
        now: u64,
    }

    impl H {
        fn tick(&mut self) -> u64 {
            self.now += 1;
            self.now
        }
        fn w(&mut self, s: SessionId, k: &str, v: &str) -> OpId {
            let at = self.tick();
            let op = self.h.invoke_write(s, k.as_bytes(), v.as_bytes(), at);
            let at = self.tick();
            self.h.complete_write(op, at);
            op
        }
        fn w_unknown(&mut self, s: SessionId, k: &str, v: &str) -> OpId {
            let at = self.tick();
            let op = self.h.invoke_write(s, k.as_bytes(), v.as_bytes(), at);
            let at = self.tick();
            self.h.unknown(op, at);
            op
        }
        fn w_failed(&mut self, s: SessionId, k: &str, v: &str) -> OpId {
            let at = self.tick();
            let op = self.h.invoke_write(s, k.as_bytes(), v.as_bytes(), at);
            let at = self.tick();
            self.h.fail(op, at);
            op
        }
        fn r(&mut self, s: SessionId, k: &str, vs: &[&str]) -> OpId {
            let at = self.tick();
            let op = self.h.invoke_read(s, k.as_bytes(), at);
            let at = self.tick();
            self.h
                .complete_read(op, at, vs.iter().map(|v| v.as_bytes().to_vec()).collect());
            op
        }
        fn check(&self) -> Vec<SessionViolation> {
            check_sessions(&self.h)
        }
    }

    fn b(v: &str) -> Vec<u8> {
        v.as_bytes().to_vec()
    }

    fn stale(
        guarantee: Guarantee,
        session: SessionId,
        read: OpId,
        key: &str,
        missing: &str,
        write: OpId,
        returned: &[&str],
    ) -> SessionViolation {
        SessionViolation::StaleRead {
            guarantee,
            session,
            read,
            key: b(key),
            missing: b(missing),
            write,
            returned: returned.iter().map(|v| b(v)).collect(),
        }
    }

    #[test]
    fn a_clean_multi_session_history_with_cross_key_reads_passes() {
        let mut h = H::default();
        h.w(1, "post", "p1");
        h.r(2, "post", &["p1"]);
        h.w(2, "reply", "r1");
        h.r(3, "reply", &["r1"]);
        h.r(3, "post", &["p1"]);
        h.w(3, "post", "p2");
        h.r(1, "post", &["p2"]);
        h.r(1, "reply", &["r1"]);
        h.r(2, "post", &["p2"]);
        h.w(1, "other", "o1");
        h.r(1, "other", &["o1"]);
        assert_eq!(h.check(), []);
    }

    #[test]
    fn concurrent_writes_returned_as_siblings_pass() {
        let mut h = H::default();
        h.w(1, "k", "a");
        h.w(2, "k", "b");
        h.r(1, "k", &["a", "b"]);
        h.r(2, "k", &["b", "a"]);
        h.r(3, "k", &["a", "b"]);
        assert_eq!(h.check(), []);
    }

    #[test]
    fn a_later_write_that_replaced_an_earlier_one_returned_alone_passes() {
        let mut h = H::default();
        h.w(1, "k", "a");
        h.r(2, "k", &["a"]);
        h.w(2, "k", "b");
        h.r(1, "k", &["b"]);
        h.r(2, "k", &["b"]);
        assert_eq!(h.check(), []);
    }

    #[test]
    fn an_unknown_own_write_never_seen_need_not_be_seen() {
        let mut h = H::default();
        h.w(1, "k", "a");
        h.w_unknown(1, "k", "b");
        h.r(1, "k", &["a"]);
        h.w_unknown(2, "j", "c");
        h.r(2, "j", &[]);
        assert_eq!(h.check(), []);
    }

    #[test]
    fn an_unknown_write_once_read_must_stay_seen() {
        let mut h = H::default();
        h.w_unknown(1, "k", "a");
        h.r(1, "k", &["a"]);
        let r = h.r(1, "k", &[]);
        assert_eq!(
            h.check(),
            [stale(
                Guarantee::MonotonicReads,
                1,
                r,
                "k",
                "a",
                OpId(0),
                &[]
            )]
        );
    }

    #[test]
    fn reading_a_successor_of_a_must_see_value_passes() {
        let mut h = H::default();
        h.w(1, "k", "v1");
        h.r(2, "k", &["v1"]);
        h.w(2, "k", "v2");
        // Session 1 must see v1 (its own write): v2 follows it, so {v2} alone is fine.
        h.r(1, "k", &["v2"]);
        assert_eq!(h.check(), []);
    }

    /// Negative control 1 (monotonic reads, Terry et al. §3): going back to a value the
    /// session's earlier read had already replaced.
    #[test]
    fn a_stale_read_after_a_newer_one_violates_monotonic_reads() {
        let mut h = H::default();
        h.w(1, "k", "v1");
        h.r(2, "k", &["v1"]);
        let v2 = h.w(2, "k", "v2");
        h.r(3, "k", &["v2"]);
        let r = h.r(3, "k", &["v1"]);
        assert_eq!(
            h.check(),
            [stale(
                Guarantee::MonotonicReads,
                3,
                r,
                "k",
                "v2",
                v2,
                &["v1"]
            )]
        );
    }

    /// Negative control 2 (read your writes, §3): the session's own acknowledged write is gone.
    #[test]
    fn a_lost_own_write_violates_read_your_writes() {
        let mut h = H::default();
        let v = h.w(1, "k", "v");
        let r = h.r(1, "k", &[]);
        assert_eq!(
            h.check(),
            [stale(Guarantee::ReadYourWrites, 1, r, "k", "v", v, &[])]
        );

        let mut h = H::default();
        h.w(1, "k", "older");
        h.r(1, "k", &["older"]);
        let v = h.w(1, "k", "v");
        let r = h.r(1, "k", &["older"]);
        assert_eq!(
            h.check(),
            [stale(
                Guarantee::ReadYourWrites,
                1,
                r,
                "k",
                "v",
                v,
                &["older"]
            )]
        );
    }

    /// Negative control 3 (monotonic writes, §3): one session's two writes kept side by side.
    #[test]
    fn two_writes_of_one_session_returned_as_siblings_violate_monotonic_writes() {
        let mut h = H::default();
        let a = h.w(1, "k", "a");
        let c = h.w(1, "k", "c");
        let r = h.r(2, "k", &["a", "c"]);
        assert_eq!(
            h.check(),
            [SessionViolation::OrderedSiblings {
                guarantee: Guarantee::MonotonicWrites,
                session: 2,
                read: r,
                key: b("k"),
                earlier: a,
                earlier_value: b("a"),
                later: c,
                later_value: b("c"),
            }]
        );
    }

    #[test]
    fn a_replaced_value_beside_its_replacement_violates_writes_follow_reads() {
        let mut h = H::default();
        let a = h.w(1, "k", "a");
        h.r(2, "k", &["a"]);
        let c = h.w(2, "k", "c");
        let r = h.r(3, "k", &["c", "a"]);
        assert_eq!(
            h.check(),
            [SessionViolation::OrderedSiblings {
                guarantee: Guarantee::WritesFollowReads,
                session: 3,
                read: r,
                key: b("k"),
                earlier: a,
                earlier_value: b("a"),
                later: c,
                later_value: b("c"),
            }]
        );
    }

    /// Negative control 4: the bulletin board of Terry et al. §2: a reply visible without the
    /// post it answers.
    #[test]
    fn a_reply_seen_without_its_post_violates_writes_follow_reads() {
        let mut h = H::default();
        let p = h.w(1, "post", "p");
        h.r(2, "post", &["p"]);
        h.w(2, "reply", "r");
        h.r(3, "reply", &["r"]);
        let r = h.r(3, "post", &[]);
        assert_eq!(
            h.check(),
            [stale(
                Guarantee::WritesFollowReads,
                3,
                r,
                "post",
                "p",
                p,
                &[]
            )]
        );
    }

    /// Negative control 5: values nobody wrote, a failed write's, and another key's.
    #[test]
    fn phantom_values_are_reported() {
        let mut h = H::default();
        h.w_failed(1, "k", "refused");
        h.w(1, "j", "elsewhere");
        let r = h.r(2, "k", &["nobody", "refused", "elsewhere"]);
        let phantom = |v: &str| SessionViolation::Phantom {
            session: 2,
            read: r,
            key: b("k"),
            value: b(v),
        };
        assert_eq!(
            h.check(),
            [phantom("nobody"), phantom("refused"), phantom("elsewhere")]
        );
    }

    /// Inheritance over three hops and three keys: a → b → c → d, so whoever read d must see a.
    #[test]
    fn must_see_is_inherited_transitively_over_three_hops() {
        let mut h = H::default();
        let a = h.w(1, "a", "a1");
        h.r(2, "a", &["a1"]);
        h.w(2, "b", "b1");
        h.r(3, "b", &["b1"]);
        h.w(3, "c", "c1");
        h.r(4, "c", &["c1"]);
        h.w(4, "d", "d1");
        h.r(5, "d", &["d1"]);
        h.r(5, "a", &["a1"]);
        assert_eq!(h.check(), []);
        h.r(6, "d", &["d1"]);
        let r = h.r(6, "a", &[]);
        assert_eq!(
            h.check(),
            [stale(Guarantee::WritesFollowReads, 6, r, "a", "a1", a, &[])]
        );
    }

    /// A successor on the key itself also counts when the must-see write was inherited.
    #[test]
    fn an_inherited_write_is_satisfied_by_its_successor() {
        let mut h = H::default();
        h.w(1, "post", "p");
        h.r(2, "post", &["p"]);
        h.w(2, "reply", "r");
        h.r(4, "post", &["p"]);
        h.w(4, "post", "p2");
        h.r(3, "reply", &["r"]);
        h.r(3, "post", &["p2"]);
        assert_eq!(h.check(), []);
    }

    /// A read breaking several guarantees is reported once for each.
    #[test]
    fn one_read_missing_writes_for_several_reasons_names_each_guarantee() {
        let mut h = H::default();
        let own = h.w(1, "k", "own");
        h.w(2, "k", "theirs");
        h.r(1, "k", &["own", "theirs"]);
        let p = h.w(3, "k", "inherited");
        h.r(3, "k", &["inherited", "own", "theirs"]);
        h.w(3, "j", "j1");
        h.r(1, "j", &["j1"]);
        let r = h.r(1, "k", &[]);
        let found = h.check();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0],
            stale(Guarantee::ReadYourWrites, 1, r, "k", "own", own, &[])
        );
        assert!(matches!(
            found[1],
            SessionViolation::StaleRead {
                guarantee: Guarantee::MonotonicReads,
                ..
            }
        ));
        assert_eq!(
            found[2],
            stale(Guarantee::WritesFollowReads, 1, r, "k", "inherited", p, &[])
        );
    }

    #[test]
    fn overlapping_ops_of_one_session_are_reported() {
        let mut hist = SessionHistory::new();
        let a = hist.invoke_write(1, b"k", b"a", 1);
        let c = hist.invoke_read(1, b"k", 2);
        hist.complete_write(a, 3);
        hist.complete_read(c, 4, vec![b("a")]);
        let p = hist.invoke_read(2, b"k", 5);
        let q = hist.invoke_read(2, b"k", 6);
        hist.complete_read(q, 7, vec![b("a")]);
        assert_eq!(
            check_sessions(&hist),
            [
                SessionViolation::Overlapping {
                    session: 1,
                    earlier: a,
                    later: c
                },
                SessionViolation::Overlapping {
                    session: 2,
                    earlier: p,
                    later: q
                },
            ]
        );
    }

    /// Session order is invocation order, not recording order.
    #[test]
    fn ops_recorded_out_of_order_are_judged_in_invocation_order() {
        let mut hist = SessionHistory::new();
        let late = hist.invoke_read(1, b"k", 10);
        hist.complete_read(late, 11, vec![]);
        let early = hist.invoke_write(1, b"k", b"v", 1);
        hist.complete_write(early, 2);
        assert_eq!(
            check_sessions(&hist),
            [stale(
                Guarantee::ReadYourWrites,
                1,
                late,
                "k",
                "v",
                early,
                &[]
            )]
        );
    }

    #[test]
    fn a_value_from_the_reads_own_causal_future_is_a_causal_cycle() {
        let mut h = H::default();
        let r1 = h.r(1, "x", &["x1"]);
        h.w(1, "y", "y1");
        h.r(2, "y", &["y1"]);
        let x1 = h.w(2, "x", "x1");
        let found = h.check();
        assert_eq!(
            found,
            [SessionViolation::CausalCycle {
                session: 1,
                read: r1,
                key: b("x"),
                value: b("x1"),
                write: x1,
            }]
        );
    }

    #[test]
    fn duplicate_values_are_reported() {
        let mut h = H::default();
        let a = h.w(1, "k", "v");
        let c = h.w(2, "k", "v");
        h.w_failed(3, "k", "v");
        h.w(3, "j", "v");
        assert_eq!(
            h.check(),
            [SessionViolation::DuplicateValue {
                key: b("k"),
                value: b("v"),
                first: a,
                second: c,
            }]
        );
    }

    #[test]
    fn pending_ops_count_as_unknown() {
        let mut hist = SessionHistory::new();
        hist.invoke_write(1, b"k", b"v", 1);
        let r = hist.invoke_read(2, b"k", 2);
        hist.complete_read(r, 3, vec![b("v")]);
        assert_eq!(check_sessions(&hist), []);
        assert_eq!(
            hist.stats(),
            HistoryStats {
                sessions: 2,
                reads: 1,
                writes: 1,
                ok: 1,
                failed: 0,
                unknown: 0,
                pending: 1
            }
        );
    }

    #[test]
    #[should_panic(expected = "ended twice")]
    fn completing_an_op_twice_panics() {
        let mut hist = SessionHistory::new();
        let w = hist.invoke_write(1, b"k", b"v", 1);
        hist.complete_write(w, 2);
        hist.unknown(w, 3);
    }

    #[test]
    #[should_panic(expected = "completed as a write")]
    fn completing_a_read_as_a_write_panics() {
        let mut hist = SessionHistory::new();
        let r = hist.invoke_read(1, b"k", 1);
        hist.complete_write(r, 2);
    }

    #[test]
    fn violations_display_guarantee_session_key_ops_and_values() {
        let mut h = H::default();
        h.w(1, "post", "p");
        h.r(2, "post", &["p"]);
        h.w(2, "reply", "r");
        h.r(3, "reply", &["r"]);
        h.r(3, "post", &[]);
        let text = h.check()[0].to_string();
        assert_eq!(
            text,
            "writes follow reads: session 3, op 4 read key \"post\" = [], missing \"p\" (op 0), \
             which something it had seen depends on, and no successor of it"
        );
        assert_eq!(Guarantee::ReadYourWrites.to_string(), "read your writes");
        assert_eq!(Guarantee::MonotonicWrites.to_string(), "monotonic writes");
    }

    /// splitmix64, so the generated history needs no RNG crate and is the same everywhere.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A bitset over a key's writes, by their index within the key.
    #[derive(Clone, Default)]
    struct Bits(Vec<u64>);

    impl Bits {
        fn set(&mut self, i: usize) {
            if self.0.len() <= i / 64 {
                self.0.resize(i / 64 + 1, 0);
            }
            self.0[i / 64] |= 1 << (i % 64);
        }
        fn has(&self, i: usize) -> bool {
            self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
        }
        fn join(&mut self, other: &Bits) {
            if self.0.len() < other.0.len() {
                self.0.resize(other.0.len(), 0);
            }
            for (a, b) in self.0.iter_mut().zip(&other.0) {
                *a |= b;
            }
        }
    }

    /// A history of `ops` atomic ops against a correct single-copy sibling store with exact
    /// per-key contexts: a write replaces the siblings its session's context covers, a read
    /// returns all siblings and hands over the key's context. 5% of writes end unknown (applied
    /// or not, at random), 5% fail. With `lossy`, one read in 50 drops the newest sibling.
    fn generated(
        seed: u64,
        ops: usize,
        sessions: usize,
        keys: usize,
        lossy: bool,
    ) -> SessionHistory {
        let mut rng = Rng(seed);
        let mut hist = SessionHistory::new();
        let mut siblings: Vec<Vec<(usize, Vec<u8>)>> = vec![Vec::new(); keys];
        let mut written = vec![0usize; keys];
        let mut store_ctx = vec![Bits::default(); keys];
        let mut client_ctx = vec![vec![Bits::default(); keys]; sessions];
        for i in 0..ops {
            let (s, k) = (rng.below(sessions), rng.below(keys));
            let key = format!("k{k}");
            let at = 2 * i as u64;
            if rng.below(2) == 0 {
                let op = hist.invoke_read(s, key.as_bytes(), at);
                let mut values: Vec<Vec<u8>> = siblings[k].iter().map(|(_, v)| v.clone()).collect();
                if lossy && !values.is_empty() && rng.below(50) == 0 {
                    values.pop();
                }
                hist.complete_read(op, at + 1, values);
                client_ctx[s][k].join(&store_ctx[k]);
            } else {
                let value = format!("v{i}");
                let op = hist.invoke_write(s, key.as_bytes(), value.as_bytes(), at);
                let (applied, ok) = match rng.below(20) {
                    0 => {
                        hist.fail(op, at + 1);
                        (false, false)
                    }
                    1 => {
                        hist.unknown(op, at + 1);
                        (rng.below(2) == 0, false)
                    }
                    _ => {
                        hist.complete_write(op, at + 1);
                        (true, true)
                    }
                };
                if applied {
                    let local = written[k];
                    written[k] += 1;
                    let ctx = &client_ctx[s][k];
                    siblings[k].retain(|(x, _)| !ctx.has(*x));
                    siblings[k].push((local, value.into_bytes()));
                    store_ctx[k].set(local);
                    if ok {
                        client_ctx[s][k].set(local);
                    }
                }
            }
        }
        hist
    }

    /// The scale the checker is meant for (50k ops, 20 sessions, 100 keys), against a correct
    /// store: nothing is reported. Prints the time; speed is not asserted (see STYLE.md).
    #[test]
    fn a_generated_history_of_50k_ops_from_a_correct_store_passes() {
        for seed in [1, 2] {
            let hist = generated(seed, 50_000, 20, 100, false);
            let start = Instant::now();
            let found = check_sessions(&hist);
            println!(
                "seed {seed}: {} checked in {:?}",
                hist.stats(),
                start.elapsed()
            );
            assert_eq!(found, [], "seed {seed}");
        }
    }

    /// Negative control at scale: the same store, dropping a sibling now and then, is caught.
    #[test]
    fn a_generated_history_of_50k_ops_from_a_lossy_store_is_caught() {
        let hist = generated(3, 50_000, 20, 100, true);
        let start = Instant::now();
        let found = check_sessions(&hist);
        println!(
            "seed 3 (lossy): {} violations in {:?}",
            found.len(),
            start.elapsed()
        );
        assert!(
            found
                .iter()
                .any(|v| matches!(v, SessionViolation::StaleRead { .. })),
            "seed 3: no stale read found"
        );
    }
}
