//! SESSIONS
//!
//! A client that talks to one node and then another must never see the store go back in time.
//! Terry, Demers, Petersen, Spreitzer, Theimer and Welch ("Session Guarantees for Weakly
//! Consistent Replicated Data", 1994) name four guarantees for a session, a sequence of reads
//! and writes by one client:
//!
//! - *read your writes*: a read sees every earlier write of the session;
//! - *monotonic reads*: a read never sees an older state than an earlier read of the session saw;
//! - *monotonic writes*: a write is ordered after the session's earlier writes, everywhere;
//! - *writes follow reads*: a write is ordered after the writes the session had read, everywhere,
//!   so whoever sees the new write can also see what it depended on. Across keys this is the
//!   bulletin-board rule: a reply is never visible without the post it answers.
//!
//! A [`Session`] is the client's half. Per key it touched it keeps a [`Floor`]: the join of the
//! contexts of the states it read (`read`), the dot of its latest acknowledged write (`wrote`;
//! more than one if processes shared the session),
//! and the vectors it inherited from the values it read (`deps`, below). Each request carries
//! the floor of the one key it touches, never the whole session; the key's owner answers a read
//! only from a merged state whose context dominates that floor, and applies a write only on such
//! a state (SESSIONS in `kv/mod.rs`). A request whose floor no reachable copy meets is
//! refused with [`crate::Error::SessionUnmet`], naming the guarantee, and retried with backoff
//! until its deadline; an older state is never returned.
//!
//! WRITES
//!
//! A session write's context is the caller's context joined with what the session read of the
//! key, so it replaces what the session saw (writes follow reads, per key), and it names the
//! dots of the session's latest acknowledged writes of the key, which it replaces exactly
//! (monotonic writes, per key), even when it is blind. Exact dots, not a vector: a vector that
//! covers the session's last dot `(a, 7)` also covers `(a, 5)`, a concurrent version the
//! session may never have seen, which would then be dropped silently. The owner applies the
//! write only on a state that covers those dots, so the state it makes covers them too. A write
//! whose answer was lost has no known dot and is not replaced: it may come back as a sibling.
//!
//! A write also carries its dependencies ([`Deps`]): for every other key the session holds an
//! unstable floor of, that floor's joined vector. They are stored with the version and returned
//! with every read of it; a session that reads the version inherits them, so its later reads of
//! those keys cannot return states older than what the writer had seen. Dependencies are
//! resolved lazily, when the inheriting session reads the key, not eagerly when it reads the
//! version that carries them: eager resolution would make every read of a value with
//! dependencies ask the owners of other keys, a cost that grows with the dependencies and is
//! paid even by readers who never read them; lazy resolution costs nothing unless the dependency
//! is read and its copy lags. The cost is that the inheriting session may learn only later, when
//! it reads the dependency, that the copies holding it are unreachable: it then gets
//! `SessionUnmet`, never the older state.
//!
//! STABILITY AND BOUNDS
//!
//! A floor is stable once every one of the key's `N` copies holds a state that dominates it.
//! The session learns that from answers ([`crate::message::ReadReply::stable`],
//! [`crate::message::Response::Written`]): a write acknowledged by all `N` copies; a read of a
//! state the owner knows all `N` copies stored (it remembers, for recently written keys, the
//! last state every replica acknowledged, which in a ring in sync is every write a moment after
//! it is answered); a read whose every copy answered with the merged state (what a read with
//! `R = N` asks for).
//!
//! Stability is what lets a session forget, but only at its bounds. A write carries at most
//! [`MAX_DEPS`] dependencies of at most [`MAX_DEPS_BYTES`] bytes, and a session holds at most
//! [`MAX_KEYS`] keys. Below the bounds a write carries every other key the session holds, stable
//! or not: stability is relative to the copies of the ring that saw it, and a partition that
//! cuts all `N` copies of a key off from a reader's side makes a node there the key's owner
//! without its data, which would serve a reader that had not inherited the floor an older
//! state. At the dependency bound the oldest stable keys are left out first (a reader could then
//! see one of them stale only across such a partition); if that is not enough the client
//! compacts (it reads the oldest unstable keys with `R = N` to learn their stability), and if
//! that fails it refuses with [`crate::Error::SessionFull`] before sending anything. No
//! requirement is dropped silently, and a key's own floor is always sent with its requests.
//!
//! A session's saved form ([`Session::to_bytes`]) starts with a magic and a format version, so
//! a program can keep it in a file and restore it; [`Session::merge`] joins two copies of one
//! session (two processes sharing a session file), which can only add requirements.
//!
//! CAVEATS
//!
//! - Tombstone collection removes a key's state once every replica holds the same tombstone
//!   (`kv/collect.rs`); a session floor on that key older than the tombstone grace then cannot
//!   be met (the context that dominated it is gone). Such a floor is stable long before (every
//!   replica held the tombstone), so it matters only to a session that never learned that; it
//!   gets `SessionUnmet` and can [`Session::forget`] the key.
//! - Context pruning ([`crate::version::Versioned::prune`], beyond 64 coordinators of one key)
//!   drops the entries with the smallest counters; a floor naming a pruned entry can no longer be
//!   met, and the session gets `SessionUnmet` for that key until it forgets it.
//! - A dependency names another key's state, which the node storing it cannot check (that key
//!   lives elsewhere). A hostile writer can store one no state will ever meet, and every
//!   session that reads the version then gets `SessionUnmet` for that key; so does an honest
//!   dependency on a key whose tombstone was collected since (no copy's context dominates it
//!   any more), while the dependent version lives. The session gets out with
//!   [`Session::forget`] (`kvctl session forget KEY`). Authenticated clients (issue 10) limit who
//!   can write such a dependency; a per-key record of collected tombstones would let a
//!   collected key meet the floors it met before. (Tests: `node/tests/review_sessions.rs`,
//!   ignored with these reasons.)
//! - A write names the dots it replaces; the owner cannot tell that they are the session's
//!   own, so a forged request can replace a version it never read by naming its dot, as a
//!   forged context already can. Versions carry no session identity to check it against.
//! - Stability counts the copies that stored a state, a stand-in for a suspected replica
//!   included; when the replica comes back without it the owner forgets its records (the
//!   replicas changed), but a session told "stable" before keeps it.
//! - A session write whose earlier attempt reached an owner that did not answer, and whose
//!   retry was refused for its floor, is answered [`crate::Error::Ambiguous`]: the first attempt
//!   may have been applied.
//! - Guarantees hold between session clients: a version written without a session carries no
//!   dependencies, so it passes nothing on to its readers.

use crate::error::{Error, Result};
use crate::version::{Dot, VersionVector, decode_exact};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Most keys a session holds.
pub const MAX_KEYS: usize = 4096;
/// Most dependencies one write carries (and so most unstable keys a session holds besides the
/// one it writes).
pub const MAX_DEPS: usize = 64;
/// Most encoded bytes of one write's dependencies.
pub const MAX_DEPS_BYTES: usize = 32 << 10;
/// Most written dots a floor names (one per process that shared the session concurrently).
pub const MAX_WROTE: usize = 8;

/// Most written dots a decoded [`Floor`] may name: a bound on decoding memory, above
/// [`MAX_WROTE`] so that a floor over the policy bound but not absurd is still refused with
/// [`Floor::validate`]'s clear answer rather than as an undecodable frame.
const MAX_WROTE_DECODED: usize = 8 * MAX_WROTE;

/// Most keys decoded [`Deps`] may name: a bound on decoding memory. A write carries at most
/// [`MAX_DEPS`] (checked by [`Deps::validate`]); a read's, the union over its siblings, feeds a
/// session that holds at most [`MAX_KEYS`] keys anyway.
const MAX_DEPS_DECODED: usize = MAX_KEYS;

/// Magic and format version of [`Session::to_bytes`].
const MAGIC: &[u8; 4] = b"CKVS";
const FORMAT: u8 = 1;

/// One of the four session guarantees. The order is the order of precedence when several
/// explain why a session must see a write (the session checker's, [`crate::testing::sessions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Guarantee {
    /// A read sees the session's earlier writes.
    ReadYourWrites,
    /// A read never sees an older state than the session's earlier reads.
    MonotonicReads,
    /// A write is ordered after the session's earlier writes.
    MonotonicWrites,
    /// A write is ordered after what the session read; a value is never seen without what its
    /// writer had read.
    WritesFollowReads,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::ReadYourWrites => "read your writes",
            Guarantee::MonotonicReads => "monotonic reads",
            Guarantee::MonotonicWrites => "monotonic writes",
            Guarantee::WritesFollowReads => "writes follow reads",
        })
    }
}

/// What a session requires of one key: a state that covers its latest write and dominates what
/// it read and inherited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// The join of the contexts of the states the session read.
    pub read: VersionVector,
    /// The dots of the session's latest acknowledged writes of the key: one, unless several
    /// processes shared the session (see [`Session::merge`]); at most [`MAX_WROTE`].
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_WROTE_DECODED>")]
    pub wrote: Vec<Dot>,
    /// What the values the session read of other keys depended on, for this key.
    pub deps: VersionVector,
}

impl Floor {
    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.wrote.is_empty() && self.deps.is_empty()
    }

    /// The whole requirement as one vector.
    pub fn vector(&self) -> VersionVector {
        let mut v = self.read.clone();
        v.merge(&self.deps);
        for d in &self.wrote {
            v.add(d);
        }
        v
    }

    /// The guarantee a read of a state with `context` would break, if any.
    pub fn unmet_by_read(&self, context: &VersionVector) -> Option<Guarantee> {
        if self.wrote.iter().any(|d| !context.covers(d)) {
            Some(Guarantee::ReadYourWrites)
        } else if !context.dominates(&self.read) {
            Some(Guarantee::MonotonicReads)
        } else if !context.dominates(&self.deps) {
            Some(Guarantee::WritesFollowReads)
        } else {
            None
        }
    }

    /// The guarantee a write applied on a state with `context` would break, if any.
    pub fn unmet_by_write(&self, context: &VersionVector) -> Option<Guarantee> {
        if self.wrote.iter().any(|d| !context.covers(d)) {
            Some(Guarantee::MonotonicWrites)
        } else if !context.dominates(&self.read) || !context.dominates(&self.deps) {
            Some(Guarantee::WritesFollowReads)
        } else {
            None
        }
    }

    /// Join `other` in. Dots beyond [`MAX_WROTE`] stay required (in `deps`) but are no
    /// longer replaced by name.
    fn join(&mut self, other: &Floor) {
        self.read.merge(&other.read);
        self.deps.merge(&other.deps);
        self.wrote.extend(other.wrote.iter().copied());
        self.wrote.sort();
        self.wrote.dedup();
        while self.wrote.len() > MAX_WROTE {
            let d = self.wrote.remove(0);
            self.deps.add(&d);
        }
    }

    /// Checks the shape of a floor a client sent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] with more than [`MAX_WROTE`] dots.
    pub fn validate(&self) -> Result<()> {
        if self.wrote.len() > MAX_WROTE {
            return Err(Error::InvalidInput(format!(
                "a session floor names {} written dots, the limit is {MAX_WROTE}",
                self.wrote.len()
            )));
        }
        Ok(())
    }
}

/// A session's identity, random: copies of one session (one file, two processes) merge only
/// with each other ([`Session::merge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..4]))
    }
}

/// What a write depended on: per other key, the vector a reader must see of it. Sorted by key,
/// one entry per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Deps(
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_DEPS_DECODED>")]
    Vec<(Vec<u8>, VersionVector)>,
);

impl Deps {
    /// No dependencies.
    pub fn new() -> Deps {
        Deps::default()
    }

    /// Join `vector` into `key`'s entry.
    pub fn add(&mut self, key: &[u8], vector: &VersionVector) {
        if vector.is_empty() {
            return;
        }
        match self.0.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
            Ok(i) => self.0[i].1.merge(vector),
            Err(i) => self.0.insert(i, (key.to_vec(), vector.clone())),
        }
    }

    /// Drop `key`'s entry.
    fn remove(&mut self, key: &[u8]) {
        self.0.retain(|(k, _)| k.as_slice() != key);
    }

    /// Join all of `other` in.
    pub fn merge(&mut self, other: &Deps) {
        for (k, v) in &other.0 {
            self.add(k, v);
        }
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &VersionVector)> {
        self.0.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes they take encoded.
    pub fn encoded_len(&self) -> usize {
        self.encode().len()
    }

    /// Encoded (bincode), as a version stores them.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding Deps into a Vec cannot fail")
    }

    /// Parse [`Deps::encode`]'s bytes.
    ///
    /// # Errors
    /// [`Error::InvalidData`] if they do not decode exactly.
    pub fn decode(bytes: &[u8]) -> Result<Deps> {
        decode_exact(bytes).map_err(|e| Error::InvalidData(format!("dependencies: {e}")))
    }

    /// Checks the bounds and the shape, as a node does before storing dependencies it was sent.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] over [`MAX_DEPS`] or [`MAX_DEPS_BYTES`], or out of order.
    pub fn validate(&self) -> Result<()> {
        if self.0.len() > MAX_DEPS {
            return Err(Error::InvalidInput(format!(
                "a write carries {} dependencies, the limit is {MAX_DEPS}",
                self.0.len()
            )));
        }
        let bytes = self.encoded_len();
        if bytes > MAX_DEPS_BYTES {
            return Err(Error::InvalidInput(format!(
                "a write's dependencies take {bytes} bytes, the limit is {MAX_DEPS_BYTES}"
            )));
        }
        if self.0.windows(2).any(|p| p[0].0 >= p[1].0) {
            return Err(Error::InvalidInput(
                "a write's dependencies are not sorted by key".into(),
            ));
        }
        Ok(())
    }
}

/// The session part of a write request: what the written key requires (its `wrote` dots are
/// the versions the write replaces by name), and what the write depended on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWrite {
    /// What the written key requires.
    pub floor: Floor,
    /// The session's unstable floors of other keys, stored with the version.
    pub deps: Deps,
}

impl SessionWrite {
    /// Checks the bounds of what a client sent.
    ///
    /// # Errors
    /// As [`Floor::validate`] and [`Deps::validate`].
    pub fn validate(&self) -> Result<()> {
        self.floor.validate()?;
        self.deps.validate()
    }
}

/// What a session knows of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    floor: Floor,
    /// Every copy is known to hold a state that dominates the floor.
    stable: bool,
    /// When the session last touched the key (its operation count then).
    touched: u64,
}

/// A client session: what it has read and written, per key. See the module essay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    id: SessionId,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Operations observed, for recency.
    ops: u64,
}

impl Session {
    /// A new session with a random id.
    pub fn new() -> Session {
        Session::with_id(SessionId(rand::random()))
    }

    /// A new session with the given id (simulations pick ids from their seed).
    pub fn with_id(id: SessionId) -> Session {
        Session {
            id,
            entries: BTreeMap::new(),
            ops: 0,
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many keys it holds whose floor is not known stable (what its writes carry).
    pub fn unstable(&self) -> usize {
        self.entries.values().filter(|e| !e.stable).count()
    }

    /// Every key it holds, in key order, with its floor and whether the floor is known stable
    /// (for tools that show a session).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Floor, bool)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.as_slice(), &e.floor, e.stable))
    }

    /// What a request touching `key` must carry: `key`'s floor (empty if the session never
    /// touched it).
    pub fn floor(&self, key: &[u8]) -> Floor {
        self.entries
            .get(key)
            .map(|e| e.floor.clone())
            .unwrap_or_default()
    }

    /// The context a write of `key` with the caller's `context` is sent with: joined with what
    /// the session read of the key.
    pub fn write_context(&self, key: &[u8], context: &VersionVector) -> VersionVector {
        let mut c = context.clone();
        if let Some(e) = self.entries.get(key) {
            c.merge(&e.floor.read);
        }
        c
    }

    /// The session part of a write of `key`: its floor and the dependencies.
    ///
    /// # Errors
    /// [`Error::SessionFull`] if the dependencies would exceed [`MAX_DEPS`] or
    /// [`MAX_DEPS_BYTES`]: compact ([`Session::compaction_candidates`]) and retry.
    pub fn for_write(&self, key: &[u8]) -> Result<SessionWrite> {
        // Every other key, oldest stable ones left out only as far as the bounds require.
        let mut others: Vec<(bool, u64, &Vec<u8>, VersionVector)> = self
            .entries
            .iter()
            .filter(|(k, _)| k.as_slice() != key)
            .map(|(k, e)| (!e.stable, e.touched, k, e.floor.vector()))
            .collect();
        others.sort_by_key(|o| (o.0, o.1));
        let mut deps = Deps::new();
        for (_, _, k, v) in &others {
            deps.add(k, v);
        }
        // Encoding costs microseconds: measure once, and again only while leaving keys out.
        let mut bytes = deps.encoded_len();
        let mut dropped = 0;
        while (deps.len() > MAX_DEPS || bytes > MAX_DEPS_BYTES)
            && others.get(dropped).is_some_and(|o| !o.0)
        {
            deps.remove(others[dropped].2);
            dropped += 1;
            bytes = deps.encoded_len();
        }
        if deps.len() > MAX_DEPS || bytes > MAX_DEPS_BYTES {
            return Err(Error::SessionFull(format!(
                "a write would carry {} dependencies ({} bytes; the limits are {MAX_DEPS} and \
                 {MAX_DEPS_BYTES}) and none more can be shown stable now; retry when every \
                 replica is up, or start a new session",
                deps.len(),
                bytes
            )));
        }
        Ok(SessionWrite {
            floor: self.floor(key),
            deps,
        })
    }

    /// Whether the session may take an operation on `key` without passing a bound. (What its
    /// reads inherit, and a merge of two copies, may take it past [`MAX_KEYS`]; it then takes
    /// no new key of its own until it is reset.)
    ///
    /// # Errors
    /// [`Error::SessionFull`] if `key` is new and the session holds [`MAX_KEYS`] keys.
    pub fn admit(&self, key: &[u8]) -> Result<()> {
        if self.entries.len() >= MAX_KEYS && !self.entries.contains_key(key) {
            return Err(Error::SessionFull(format!(
                "the session holds {MAX_KEYS} keys, its bound; start a new session"
            )));
        }
        Ok(())
    }

    /// Whether the next write should compact first: it would carry more dependencies than the
    /// bound allows.
    pub fn needs_compaction(&self) -> bool {
        let (count, bytes) = self.unstable_deps();
        count > MAX_DEPS || bytes > MAX_DEPS_BYTES
    }

    /// How many unstable keys the session holds and about how many bytes they take as
    /// dependencies.
    fn unstable_deps(&self) -> (usize, usize) {
        self.entries
            .iter()
            .filter(|(_, e)| !e.stable)
            .fold((0, 0), |(n, b), (k, e)| (n + 1, b + dep_bytes(k, e)))
    }

    /// The keys to read with `R = N` to learn their stability, oldest first: the unstable keys
    /// beyond half the dependency bound.
    pub fn compaction_candidates(&self) -> Vec<Vec<u8>> {
        let mut unstable: Vec<(u64, &Vec<u8>, usize)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.stable)
            .map(|(k, e)| (e.touched, k, dep_bytes(k, e)))
            .collect();
        unstable.sort();
        // Oldest first, until what is left is within half of both bounds.
        let (mut count, mut bytes) = self.unstable_deps();
        let mut out = Vec::new();
        for (_, k, b) in unstable {
            if count <= MAX_DEPS / 2 && bytes <= MAX_DEPS_BYTES / 2 {
                break;
            }
            out.push(k.clone());
            count -= 1;
            bytes -= b;
        }
        out
    }

    /// Record a read of `key` that returned a state with `context`, the versions' dependencies
    /// `deps`, and whether every copy was seen to hold it (`stable`).
    pub fn observe_read(&mut self, key: &[u8], context: &VersionVector, deps: &Deps, stable: bool) {
        self.ops += 1;
        let touched = self.ops;
        let e = self.entries.entry(key.to_vec()).or_default();
        e.floor.read.merge(context);
        e.touched = touched;
        // The state read dominated the floor (the owner checked), so its stability is the
        // floor's; and it is not stable if it gained anything not seen everywhere.
        e.stable = stable && context.dominates(&e.floor.vector());
        for (k, v) in deps.iter() {
            if k == key {
                continue;
            }
            let d = self.entries.entry(k.to_vec()).or_default();
            if !d.floor.vector().dominates(v) {
                d.floor.deps.merge(v);
                d.stable = false;
                d.touched = touched;
            }
        }
    }

    /// Record an acknowledged write of `key` that got `dot`, stored by every copy if `stable`.
    pub fn observe_write(&mut self, key: &[u8], dot: Dot, stable: bool) {
        self.ops += 1;
        let touched = self.ops;
        let e = self.entries.entry(key.to_vec()).or_default();
        // The write replaced the dots named before (it was applied on a state covering them),
        // so a state covering its dot covers them too.
        e.floor.wrote = vec![dot];
        e.touched = touched;
        // The write was applied on a state that dominated the floor: all of it is in the state
        // every copy stored.
        e.stable = stable;
    }

    /// Forget the oldest floors known stable until the session holds at most `keep` keys, and
    /// return how many were forgotten. What a long-lived session (a RESP connection) does at
    /// its key bound: a stable floor is one every copy holds, the same floors the dependency
    /// bound leaves out first (STABILITY AND BOUNDS), so only a partition cutting every copy of
    /// such a key off from the reader could then show it an older state. Unstable floors are
    /// never forgotten.
    pub fn forget_stable(&mut self, keep: usize) -> usize {
        let excess = self.entries.len().saturating_sub(keep);
        if excess == 0 {
            return 0;
        }
        let mut stable: Vec<(u64, Vec<u8>)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.stable)
            .map(|(k, e)| (e.touched, k.clone()))
            .collect();
        stable.sort();
        let mut forgotten = 0;
        for (_, key) in stable.into_iter().take(excess) {
            self.entries.remove(&key);
            forgotten += 1;
        }
        forgotten
    }

    /// Forget `key`: nothing is required of it any more. Returns whether it was held.
    pub fn forget(&mut self, key: &[u8]) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Join another copy of this session (the same id): every requirement of either.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `other` is another session.
    pub fn merge(&mut self, other: &Session) -> Result<()> {
        if other.id != self.id {
            return Err(Error::InvalidInput(format!(
                "cannot merge session {} into session {}",
                other.id, self.id
            )));
        }
        for (k, theirs) in &other.entries {
            let mine = self.entries.entry(k.clone()).or_default();
            let (a, b) = (mine.floor.vector(), theirs.floor.vector());
            // The joined floor is stable if a floor known stable dominates it.
            mine.stable = (mine.stable && a.dominates(&b)) || (theirs.stable && b.dominates(&a));
            mine.floor.join(&theirs.floor);
            mine.touched = mine.touched.max(theirs.touched);
        }
        self.ops = self.ops.max(other.ops);
        Ok(())
    }

    /// The saved form: a magic, a format version, then the session (bincode).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend(
            bincode::serde::encode_to_vec(self, bincode::config::standard())
                .expect("encoding a Session into a Vec cannot fail"),
        );
        out
    }

    /// Parse a saved form.
    ///
    /// # Errors
    /// [`Error::InvalidData`] if it is not a session, is of another format version, or breaks
    /// a bound.
    pub fn from_bytes(bytes: &[u8]) -> Result<Session> {
        let bad = |why: String| Error::InvalidData(format!("session: {why}"));
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a chordkv session (bad magic)".into()))?;
        let (&format, body) = body.split_first().ok_or_else(|| bad("truncated".into()))?;
        if format != FORMAT {
            return Err(bad(format!(
                "format version {format}; this build reads version {FORMAT}"
            )));
        }
        let s: Session = decode_exact(body).map_err(bad)?;
        // No key-count check: a session may hold more than MAX_KEYS through what its reads
        // inherited or a merge of two copies joined (see `admit`), and must load again.
        Ok(s)
    }
}

/// About the bytes `key`'s entry takes as a dependency: the key, and 30 per vector entry.
fn dep_bytes(key: &[u8], e: &Entry) -> usize {
    key.len() + 8 + 30 * (e.floor.read.len() + e.floor.wrote.len() + e.floor.deps.len())
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}

#[cfg(test)]
mod tests;
