//! The node crate's error type. It is cloneable and serializable so that it crosses the wire as
//! the body of a failed response, and tests can compare errors by value.

use crate::session::Guarantee;
use serde::{Deserialize, Serialize};

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a node or in a request to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The caller asked for something malformed: an empty key, a bad address, a bad option.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Bytes from the network or the disk could not be decoded.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// A key, value or frame exceeds its configured bound.
    #[error("{what} is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large: "key", "value", "frame" (on receipt), "request" or "response" (a
        /// message that would not fit a frame, refused before sending).
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The configured bound in bytes.
        limit: u64,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// Our protocol version.
        ours: u16,
        /// The version the peer announced.
        theirs: u16,
    },
    /// The node cannot serve the request now (joining, leaving, no route, peer down); retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The peer could not be reached at all: connection refused, reset or lost. Unlike
    /// [`Error::Unavailable`], which a live node answers, this says nothing answered.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The key has several concurrent versions (siblings) where one value was asked for: read
    /// them all and write back with the read's context to resolve them.
    #[error("conflict: {0}")]
    Conflict(String),
    /// No reachable copy of the key holds a state that meets the session's floor for it: the
    /// answer would go back in time, breaking `guarantee`. Retryable: the copies that hold
    /// what the session saw may come back, or catch up. See [`crate::session`].
    #[error("cannot {op} without going back in time ({guarantee}): {detail}")]
    SessionUnmet {
        /// "read" or "write".
        op: String,
        /// The guarantee a stale answer would break.
        guarantee: Guarantee,
        /// What the node found.
        detail: String,
    },
    /// A client session is at one of its bounds ([`crate::session::MAX_KEYS`],
    /// [`crate::session::MAX_DEPS`]) and could not be compacted: nothing was sent.
    #[error("session full: {0}")]
    SessionFull(String),
    /// The request was sent to a node that does not own the key; look the owner up again.
    #[error("not the owner of this key; the ring is changing, retry")]
    WrongOwner,
    /// No answer within the deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A write whose outcome cannot be known: it may or may not have been applied, and
    /// retrying it could apply it twice. Read the key to find out, then write again.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// The node is at a bound on connections or in-flight requests.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A local I/O or storage failure.
    #[error("io: {0}")]
    Io(String),
    /// The handshake failed: a missing or wrong cluster secret or client token, or a peer that
    /// could not prove it holds the secret it should. See [`crate::auth`].
    #[error("not authenticated: {0}")]
    Unauthorized(String),
    /// The connection's access does not permit this request: a node-to-node request from a
    /// client, or a write with a read-only token. The connection stays usable.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A compare-and-set write ([`crate::message::WriteMode::IfUnchanged`]) found the key
    /// changed since the read its context came from: nothing was written. Read again, then
    /// write again.
    #[error("changed: {0}")]
    Changed(String),
}

impl Error {
    /// A short name of the variant, for metrics labels and counts of errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::InvalidData(_) => "invalid_data",
            Error::TooLarge { .. } => "too_large",
            Error::VersionMismatch { .. } => "version_mismatch",
            Error::Unavailable(_) => "unavailable",
            Error::Unreachable(_) => "unreachable",
            Error::Conflict(_) => "conflict",
            Error::SessionUnmet { .. } => "session_unmet",
            Error::SessionFull(_) => "session_full",
            Error::WrongOwner => "wrong_owner",
            Error::Timeout(_) => "timeout",
            Error::Ambiguous(_) => "ambiguous",
            Error::Overloaded(_) => "overloaded",
            Error::Io(_) => "io",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Changed(_) => "changed",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::Unreachable(_)
                | Error::WrongOwner
                | Error::Timeout(_)
                | Error::Overloaded(_)
                | Error::SessionUnmet { .. }
        )
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Io(format!("sled: {e}"))
    }
}

impl From<bincode::error::DecodeError> for Error {
    fn from(e: bincode::error::DecodeError) -> Self {
        Error::InvalidData(e.to_string())
    }
}

impl From<bincode::error::EncodeError> for Error {
    fn from(e: bincode::error::EncodeError) -> Self {
        Error::InvalidInput(format!("encode: {e}"))
    }
}
