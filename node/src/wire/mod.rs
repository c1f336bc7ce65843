//! How [`Envelope`]s cross a TCP connection: handshake, framing, buffering and a multiplexed
//! request channel.
//!
//! The layers are kept apart, as in mini-redis (`frame.rs` / `connection.rs`): [`check_frame`],
//! [`parse_frame`] and [`encode_frame`] deal in bytes only and never do I/O; [`FrameReader`] and
//! [`FrameWriter`] add buffering over a stream; [`Channel`] adds request ids, a pending map and
//! timeouts. What the messages mean lives in [`crate::message`].
//!
//! HANDSHAKE
//!
//! Right after a connection opens (inside TLS, if the node speaks it: [`crate::tls`]), each side
//! writes a 7-byte hello, followed by the exchange of [`handshake`] that proves the cluster
//! secret or a client token:
//!
//! ```text
//! +---+---+---+---+----------------+------+
//! | C | H | K | V | version u16 BE | role |
//! +---+---+---+---+----------------+------+
//! ```
//!
//! The connecting side writes its hello first and then reads the other's; the accepting side
//! reads first and answers only if the hello was good. So a server never talks to something that
//! is not a chordkv peer, and a client learns of a version mismatch before it sends a request.
//! A wrong magic means the peer is not chordkv at all (an HTTP client, a port scanner) and is
//! [`Error::InvalidData`]; another version is [`Error::VersionMismatch`]. There is no
//! negotiation: a node speaks exactly [`VERSION`]. The role ([`Role`]) tells a server whether the
//! connection comes from another node or from a client such as `kvctl`; what it may then send
//! is the [`crate::auth::Access`] its proof earned.
//!
//! FRAMING
//!
//! After the hellos each direction is a sequence of frames: a `u32` big-endian length, then that
//! many bytes of body, the bincode 2 encoding (serde, `config::standard()`) of one [`Envelope`].
//! [`parse_frame`] tells three outcomes apart: a complete frame, "incomplete" (`Ok(None)`: read
//! more bytes and ask again) and bad data (`Err`). An oversized length is refused from the
//! 4-byte prefix alone, before any of the body is buffered, so a peer cannot make us hold
//! gigabytes by announcing them. A body that does not decode, or leaves bytes unread, is
//! [`Error::InvalidData`]. After any framing error the stream position is lost and the connection
//! can only be closed.
//!
//! LIMITS
//!
//! [`Limits`] bounds a frame's body (default 8 MiB), a key (4 KiB) and a value (4 MiB); a
//! maximal `Put` fits in a default frame with room to spare ([`Limits::validate`] checks that a
//! configuration keeps this true). Both ends check the frame bound, the receiver from the prefix
//! and the sender before writing, and a sender's failure to encode never closes the connection:
//! a request that does not fit is [`Error::TooLarge`] (`what: "request"`) to its caller, and a
//! response that does not fit is replaced by an error answer to its request ([`encode_answer`]:
//! `what: "response"`, naming its size and the bound), so the asker gets an answer and the
//! connection stays up for the calls multiplexed on it. Keys and values are checked by
//! [`Limits::check_request`]: by [`Channel::call`] before sending, and by the server on every
//! request it receives. [`HARD_MAX_FRAME`] (64 MiB) caps any configured frame bound and is also
//! bincode's decode limit, so a length field inside a body (a `Vec`'s length) cannot claim more
//! memory than that either.
//!
//! MULTIPLEXING
//!
//! A [`Channel`] carries many requests at once over one connection. Each call takes a fresh
//! [`RequestId`] (counting from 1: [`NOTICE_ID`] is reserved), registers a oneshot in a pending
//! map and hands its encoded frame to a writer task; a reader task matches each response to its
//! pending entry by id, so responses may come back in any order. At most [`MAX_IN_FLIGHT`] calls
//! are in flight per channel; a call beyond that waits for a slot, within its own timeout. A call
//! that times out removes its entry, and a late answer to it is dropped. When the connection
//! fails every pending call gets [`Error::Unreachable`] and [`Channel::is_closed`] turns true;
//! a channel never reconnects, its owner drops it and connects anew. Dropping the last clone
//! aborts both tasks, which closes the socket.
//!
//! A server that cannot parse a frame answers `Envelope::Response { id: NOTICE_ID, body: Err(e) }`
//! and closes the connection; a [`Channel`] reports `e` in the errors of the calls it fails.

pub mod handshake;

pub use handshake::Credential;

use crate::message::{Envelope, Request, RequestId, Response};
use crate::tls::ClientTls;
use crate::{Error, Result};
use bytes::{Buf, BytesMut};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The first four bytes of every hello.
pub const MAGIC: [u8; 4] = *b"CHKV";

/// The protocol version this build speaks. Peers must speak the same one. Version 2 added the
/// authenticating exchange after the hellos ([`handshake`]); version 3 the write mode of puts,
/// deletes and owner writes ([`crate::message::WriteMode`]).
pub const VERSION: u16 = 3;

/// Length of a hello: magic, version, role.
pub const HELLO_LEN: usize = 7;

/// Length of a frame's length prefix.
pub const PREFIX_LEN: usize = 4;

/// No frame body may exceed this, whatever [`Limits::max_frame`] says; it is also bincode's
/// decode limit.
pub const HARD_MAX_FRAME: usize = 64 << 20;

/// How many calls a [`Channel`] carries at once; further calls wait for a slot.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The request id of a connection-level notice: a response not to any request, sent just before
/// the sender closes the connection (for instance after a frame it could not parse).
pub const NOTICE_ID: RequestId = 0;

/// How much a [`FrameReader`] asks the socket for at least, when it needs more bytes.
const READ_CHUNK: usize = 8 << 10;

/// Room left in a frame for the envelope around a maximal key and value (tags, id, lengths).
const ENVELOPE_SLACK: usize = 1 << 10;

/// bincode's configuration for frame bodies. The limit bounds what length fields inside a body
/// may claim; [`Limits::max_frame`] is checked separately, on the prefix.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<HARD_MAX_FRAME>()
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Who opened a connection, as announced in its hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Another node of the ring. Servers always announce this role.
    Node = 1,
    /// A client such as `kvctl`.
    Client = 2,
}

impl Role {
    /// The role a hello's last byte names, if any.
    pub fn from_byte(byte: u8) -> Option<Role> {
        match byte {
            1 => Some(Role::Node),
            2 => Some(Role::Client),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Client => "client",
        })
    }
}

/// The hello announcing `role`.
pub fn encode_hello(role: Role) -> [u8; HELLO_LEN] {
    let [v0, v1] = VERSION.to_be_bytes();
    let [m0, m1, m2, m3] = MAGIC;
    [m0, m1, m2, m3, v0, v1, role as u8]
}

/// Checks a peer's hello and returns the role it announces.
///
/// # Errors
/// [`Error::InvalidData`] on a bad magic or an unknown role, [`Error::VersionMismatch`] if the
/// peer speaks another version.
pub fn parse_hello(hello: &[u8; HELLO_LEN]) -> Result<Role> {
    let [m0, m1, m2, m3, v0, v1, role] = *hello;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(Error::InvalidData("not a chordkv peer: bad magic".into()));
    }
    let theirs = u16::from_be_bytes([v0, v1]);
    if theirs != VERSION {
        return Err(Error::VersionMismatch {
            ours: VERSION,
            theirs,
        });
    }
    Role::from_byte(role)
        .ok_or_else(|| Error::InvalidData(format!("unknown role {role} in the peer's hello")))
}

/// Writes our hello and flushes it.
///
/// # Errors
/// [`Error::Io`] if the write fails.
pub async fn write_hello<W: AsyncWrite + Unpin>(w: &mut W, role: Role) -> Result<()> {
    w.write_all(&encode_hello(role)).await?;
    w.flush().await?;
    Ok(())
}

/// Reads and checks the peer's hello, waiting at most `timeout`.
///
/// The magic is checked as soon as it arrives, so a peer that is not chordkv is refused without
/// waiting for the rest.
///
/// # Errors
/// As [`parse_hello`]; [`Error::Timeout`] if the hello is not complete in time;
/// [`Error::Unavailable`] if the peer closes the connection first; [`Error::Io`] if reading fails.
pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> Result<Role> {
    let read = async {
        let mut hello = [0u8; HELLO_LEN];
        let (magic, rest) = hello.split_at_mut(MAGIC.len());
        read_exact_or_hang_up(r, magic).await?;
        if *magic != MAGIC {
            return Err(Error::InvalidData("not a chordkv peer: bad magic".into()));
        }
        read_exact_or_hang_up(r, rest).await?;
        parse_hello(&hello)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "no hello from the peer within {timeout:?}"
            )))
        })
}

/// `read_exact`, with the peer hanging up reported as [`Error::Unavailable`].
async fn read_exact_or_hang_up<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Unavailable(
            "the peer closed the connection during the handshake".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Bounds on what a connection carries. See the LIMITS section of the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body, in bytes (the 4-byte prefix not counted). Capped at [`HARD_MAX_FRAME`].
    pub max_frame: usize,
    /// Largest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 8 << 20,
            max_key: 4 << 10,
            max_value: 4 << 20,
        }
    }
}

impl Limits {
    /// The limits a client applies: only the hard frame cap. The node it talks to enforces its
    /// own key and value limits and answers with a clear error, so the client never refuses a
    /// request a node configured for larger values would take.
    pub fn client() -> Limits {
        Limits {
            max_frame: HARD_MAX_FRAME,
            max_key: HARD_MAX_FRAME,
            max_value: HARD_MAX_FRAME,
        }
    }

    /// The largest state of one key that fits a frame with room for the message around it:
    /// the frame bound less [`crate::version::STATE_HEADROOM`], for
    /// [`crate::version::VersionLimits::max_state_bytes`].
    pub fn max_state(&self) -> usize {
        self.max_frame
            .saturating_sub(crate::version::STATE_HEADROOM)
    }

    /// Checks that the bounds make sense together: a frame bound within [`HARD_MAX_FRAME`], a
    /// nonzero key bound, and room in a frame for a maximal key and value.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bound that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.max_frame == 0 || self.max_frame > HARD_MAX_FRAME {
            return Err(Error::InvalidInput(format!(
                "max frame {} must be between 1 and {HARD_MAX_FRAME} bytes",
                self.max_frame
            )));
        }
        if self.max_key == 0 {
            return Err(Error::InvalidInput(
                "max key must be at least 1 byte".into(),
            ));
        }
        let needed = self
            .max_key
            .saturating_add(self.max_value)
            .saturating_add(ENVELOPE_SLACK);
        if needed > self.max_frame {
            return Err(Error::InvalidInput(format!(
                "max frame {} cannot carry a maximal key ({}) and value ({}): it needs {needed}",
                self.max_frame, self.max_key, self.max_value
            )));
        }
        Ok(())
    }

    /// Checks a key: not empty, at most [`Limits::max_key`] bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty key, [`Error::TooLarge`] for a long one.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::InvalidInput("empty key".into()));
        }
        too_large("key", key.len(), self.max_key)
    }

    /// Checks a value: at most [`Limits::max_value`] bytes (empty values are fine).
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        too_large("value", value.len(), self.max_value)
    }

    /// Checks every key and value a request carries. Requests without keys always pass; their
    /// size is bounded by the frame limit alone.
    ///
    /// # Errors
    /// As [`Limits::check_key`] and [`Limits::check_value`], for the first offender.
    pub fn check_request(&self, req: &Request) -> Result<()> {
        match req {
            Request::Get { key, .. }
            | Request::Delete { key, .. }
            | Request::Lookup { key }
            | Request::StoreGet { key, .. } => self.check_key(key),
            Request::Put { key, value, .. }
            | Request::StoreWrite {
                key,
                value: Some(value),
                ..
            } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            Request::StoreWrite {
                key, value: None, ..
            } => self.check_key(key),
            // Transfer and replication items are whole versioned states (possibly several
            // siblings): only the frame bounds them.
            Request::Transfer { items, deletes, .. } => {
                for (key, _) in items {
                    self.check_key(key)?;
                }
                deletes.iter().try_for_each(|key| self.check_key(key))
            }
            Request::Replicate { items } => {
                items.iter().try_for_each(|(key, _)| self.check_key(key))
            }
            Request::ReplicaRead { key } => self.check_key(key),
            Request::SyncFetch { keys, .. } => keys.iter().try_for_each(|key| self.check_key(key)),
            Request::Handoff { items, .. } => {
                items.iter().try_for_each(|(key, _)| self.check_key(key))
            }
            Request::Reap { items, .. } => {
                items.iter().try_for_each(|(key, _)| self.check_key(key))
            }
            Request::Ping
            | Request::FindSuccessor { .. }
            | Request::GetNeighbors
            | Request::Notify { .. }
            | Request::Leaving { .. }
            | Request::Adopted { .. }
            | Request::FailureNotice { .. }
            | Request::Block { .. }
            | Request::SyncTree { .. }
            | Request::Keys { .. }
            | Request::Status => Ok(()),
        }
    }
}

/// `Err(TooLarge)` if `size > limit`.
fn too_large(what: &str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            what: what.into(),
            size: size as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Whether `buf` starts with a complete frame, without decoding it: `Ok(Some(n))` if the first
/// `n` bytes are one (prefix included), `Ok(None)` if more bytes are needed.
///
/// # Errors
/// [`Error::TooLarge`] (`what: "frame"`) as soon as the prefix announces a body larger than
/// `max_frame` (itself capped at [`HARD_MAX_FRAME`]).
pub fn check_frame(buf: &[u8], max_frame: usize) -> Result<Option<usize>> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    too_large("frame", len, max_frame.min(HARD_MAX_FRAME))?;
    let total = PREFIX_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

/// Decodes the frame at the start of `buf`: `Ok(Some((envelope, n)))` where `n` is how many
/// bytes it took, or `Ok(None)` if the frame is not complete yet.
///
/// # Errors
/// As [`check_frame`]; [`Error::InvalidData`] if the body does not decode to an [`Envelope`] or
/// has bytes left over.
pub fn parse_frame(buf: &[u8], max_frame: usize) -> Result<Option<(Envelope, usize)>> {
    let Some(total) = check_frame(buf, max_frame)? else {
        return Ok(None);
    };
    let body = &buf[PREFIX_LEN..total];
    let (envelope, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|e| Error::InvalidData(format!("undecodable frame: {e}")))?;
    if used != body.len() {
        return Err(Error::InvalidData(format!(
            "frame has {} trailing bytes after its message",
            body.len() - used
        )));
    }
    Ok(Some((envelope, total)))
}

/// Encodes an answer as one frame, like [`encode_frame`]; but a response that cannot be encoded
/// within `max_frame` is replaced by an error answer to the same request, so that the connection
/// stays usable: [`Error::TooLarge`] (`what: "response"`, its size and the bound) for one too
/// large, the encoding error itself otherwise. Returns the frame and, if the response was
/// replaced, the error that replaced it. A request is never replaced: its caller gets the error.
///
/// # Errors
/// As [`encode_frame`], for a request, or if even the error answer does not fit (a frame bound
/// too small to carry an error message; [`Limits::validate`] never allows one).
pub fn encode_answer(envelope: &Envelope, max_frame: usize) -> Result<(Vec<u8>, Option<Error>)> {
    let (id, e) = match (encode_frame(envelope, max_frame), envelope) {
        (Ok(frame), _) => return Ok((frame, None)),
        (Err(e), Envelope::Request { .. }) => return Err(e),
        (Err(e), Envelope::Response { id, .. }) => (*id, e),
    };
    let replaced = said_of("response", e);
    let refusal = Envelope::Response {
        id,
        body: Err(replaced.clone()),
    };
    Ok((encode_frame(&refusal, max_frame)?, Some(replaced)))
}

/// A frame's [`Error::TooLarge`] as said of what the frame carried (`"request"`, `"response"`);
/// any other error as it is.
fn said_of(what: &str, e: Error) -> Error {
    match e {
        Error::TooLarge { size, limit, .. } => Error::TooLarge {
            what: what.into(),
            size,
            limit,
        },
        other => other,
    }
}

/// Encodes `envelope` as one frame, prefix included.
///
/// # Errors
/// [`Error::TooLarge`] (`what: "frame"`) if the body exceeds `max_frame` (capped at
/// [`HARD_MAX_FRAME`]); [`Error::InvalidInput`] if serialization fails.
pub fn encode_frame(envelope: &Envelope, max_frame: usize) -> Result<Vec<u8>> {
    let mut frame = vec![0u8; PREFIX_LEN];
    bincode::serde::encode_into_std_write(envelope, &mut frame, bincode_config())?;
    let len = frame.len() - PREFIX_LEN;
    too_large("frame", len, max_frame.min(HARD_MAX_FRAME))?;
    let prefix = u32::try_from(len)
        .map_err(|_| Error::InvalidInput(format!("frame of {len} bytes overflows its prefix")))?;
    frame[..PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(frame)
}

// ---------------------------------------------------------------------------------------------
// Buffered I/O
// ---------------------------------------------------------------------------------------------

/// Reads frames from a byte stream, buffering partial ones.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
    /// The size of the last frame read, prefix included.
    last_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames of at most `max_frame` body bytes from `inner`.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
            last_len: 0,
        }
    }

    /// The size in bytes of the frame [`FrameReader::read_frame`] returned last, prefix
    /// included: what its message costs, for budgets of memory held.
    pub fn last_frame_len(&self) -> usize {
        self.last_len
    }

    /// The next frame, or `Ok(None)` if the peer closed the connection cleanly between frames.
    ///
    /// Cancel-safe: if the future is dropped, bytes already read stay buffered for the next call,
    /// so it can race other futures in `tokio::select!`.
    ///
    /// # Errors
    /// As [`parse_frame`]; [`Error::InvalidData`] if the connection closes inside a frame;
    /// [`Error::Io`] if reading fails. After an error the stream is unusable: close it.
    pub async fn read_frame(&mut self) -> Result<Option<Envelope>> {
        loop {
            if let Some((envelope, used)) = parse_frame(&self.buf, self.max_frame)? {
                self.buf.advance(used);
                self.last_len = used;
                return Ok(Some(envelope));
            }
            // Make room for the whole frame at once when its length is known; check_frame has
            // already bounded that length.
            let want = match self.buf.first_chunk::<PREFIX_LEN>() {
                Some(prefix) => PREFIX_LEN + u32::from_be_bytes(*prefix) as usize,
                None => PREFIX_LEN,
            };
            self.buf
                .reserve(want.saturating_sub(self.buf.len()).max(READ_CHUNK));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(Error::InvalidData("connection closed mid-frame".into()));
            }
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// Writes frames to a byte stream through a buffer.
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes frames of at most `max_frame` body bytes to `inner`.
    pub fn new(inner: W, max_frame: usize) -> Self {
        FrameWriter {
            inner: BufWriter::new(inner),
            max_frame,
        }
    }

    /// Writes one frame and flushes it.
    ///
    /// # Errors
    /// As [`encode_frame`], in which case nothing was written and the stream is still usable;
    /// [`Error::Io`] if writing fails.
    pub async fn write_frame(&mut self, envelope: &Envelope) -> Result<()> {
        self.feed_frame(envelope).await?;
        self.flush().await
    }

    /// Buffers one frame without flushing, to send several with one flush.
    ///
    /// # Errors
    /// As [`FrameWriter::write_frame`].
    pub async fn feed_frame(&mut self, envelope: &Envelope) -> Result<()> {
        let frame = encode_frame(envelope, self.max_frame)?;
        self.inner.write_all(&frame).await?;
        Ok(())
    }

    /// Buffers one answer without flushing, as [`encode_answer`] makes it: a response too large
    /// for a frame goes as an error answer to its request instead, and that error is returned.
    ///
    /// # Errors
    /// As [`encode_answer`], in which case nothing was written; [`Error::Io`] if writing fails.
    pub async fn feed_answer(&mut self, envelope: &Envelope) -> Result<Option<Error>> {
        let (frame, replaced) = encode_answer(envelope, self.max_frame)?;
        self.inner.write_all(&frame).await?;
        Ok(replaced)
    }

    /// Flushes buffered frames to the stream.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails.
    pub async fn flush(&mut self) -> Result<()> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Flushes and shuts the stream down for writing: how to close after a final notice.
    ///
    /// # Errors
    /// [`Error::Io`] if writing fails.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// Buffers a frame [`encode_frame`] already produced.
    async fn feed_encoded(&mut self, frame: &[u8]) -> Result<()> {
        self.inner.write_all(frame).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Channel
// ---------------------------------------------------------------------------------------------

/// A multiplexed request channel to one node over one connection. See MULTIPLEXING in the
/// module doc.
///
/// Cheap to clone; all clones share the connection, and many tasks may call at once. The
/// connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

/// What the clones of a [`Channel`] share. Dropping it stops the connection's tasks.
struct Inner {
    shared: Arc<Shared>,
    limits: Limits,
    next_id: AtomicU64,
    slots: Semaphore,
    outbound: mpsc::Sender<Vec<u8>>,
    tasks: [AbortHandle; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the callers and the connection's tasks share. The tasks hold this, never [`Inner`], so
/// that dropping the last [`Channel`] drops [`Inner`].
struct Shared {
    peer: SocketAddr,
    state: Mutex<State>,
    /// Turns true once, when the connection is closed, to stop both tasks.
    closed: watch::Sender<bool>,
}

/// Calls waiting for an answer, and why the connection closed, if it has.
#[derive(Default)]
struct State {
    pending: HashMap<RequestId, oneshot::Sender<Result<Response>>>,
    closed: Option<String>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, so a poisoned lock still holds sound state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The error a call gets when the connection is gone.
    fn lost(&self, reason: &str) -> Error {
        Error::Unreachable(format!("node {}: connection lost: {reason}", self.peer))
    }

    /// Marks the connection closed, fails every pending call and stops both tasks. Only the
    /// first reason counts.
    fn close(&self, reason: String) {
        let pending = {
            let mut state = self.state();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.pending)
        };
        tracing::debug!(peer = %self.peer, %reason, failed = pending.len(), "channel closed");
        for (_, call) in pending {
            // The caller may have given up already; nothing to do then.
            let _ = call.send(Err(self.lost(&reason)));
        }
        self.closed.send_replace(true);
    }

    /// Hands a response to the call waiting for it, if it still waits.
    fn complete(&self, id: RequestId, body: Result<Response>) {
        let call = self.state().pending.remove(&id);
        match call {
            Some(call) => {
                let _ = call.send(body);
            }
            None => tracing::trace!(peer = %self.peer, id, "dropping a late or unknown response"),
        }
    }
}

/// Removes a call's pending entry when the call ends, however it ends (answered, timed out,
/// cancelled), so the map holds only calls that still wait.
struct PendingEntry<'a> {
    shared: &'a Shared,
    id: RequestId,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        self.shared.state().pending.remove(&self.id);
    }
}

/// How to open a [`Channel`]: the role to announce, what to prove, whether to speak TLS, and
/// the limits the channel enforces.
#[derive(Clone, Debug)]
pub struct Dialer {
    /// The role announced in the hello.
    pub role: Role,
    /// What the handshake proves ([`handshake`]).
    pub credential: Credential,
    /// Speak TLS first, trusting these CAs; `None`: plain TCP.
    pub tls: Option<ClientTls>,
    /// Bounds on what the channel carries.
    pub limits: Limits,
}

impl Dialer {
    /// Plain TCP, proving nothing: what a node without credentials takes.
    pub fn open(role: Role, limits: Limits) -> Dialer {
        Dialer {
            role,
            credential: Credential::None,
            tls: None,
            limits,
        }
    }
}

impl Channel {
    /// [`Channel::dial`] with [`Dialer::open`]: plain TCP, no credential.
    ///
    /// # Errors
    /// As [`Channel::dial`].
    pub async fn connect(
        addr: SocketAddr,
        role: Role,
        limits: Limits,
        connect_timeout: Duration,
    ) -> Result<Channel> {
        Channel::dial(addr, &Dialer::open(role, limits), connect_timeout).await
    }

    /// Connects to the node at `addr`, speaks TLS if `dialer` says so, and runs the handshake,
    /// all within `connect_timeout`. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Unreachable`] if the node cannot be reached or hangs up during the handshake,
    /// [`Error::Timeout`] if connecting and the handshake take longer than `connect_timeout`,
    /// [`Error::Unauthorized`] if TLS or the handshake's proofs fail, and the errors of
    /// [`Channel::from_stream`].
    pub async fn dial(
        addr: SocketAddr,
        dialer: &Dialer,
        connect_timeout: Duration,
    ) -> Result<Channel> {
        let deadline = Instant::now() + connect_timeout;
        let late = || {
            Error::Timeout(format!(
                "connecting to {addr} took longer than {connect_timeout:?}"
            ))
        };
        let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(Error::Unreachable(format!(
                    "node {addr}: {}",
                    describe_io(&e)
                )));
            }
            Err(_) => return Err(late()),
        };
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        match &dialer.tls {
            None => Channel::start(stream, addr, dialer, remaining(), MAX_IN_FLIGHT).await,
            Some(tls) => {
                let stream = tokio::time::timeout_at(deadline, tls.connect(addr, stream))
                    .await
                    .map_err(|_| late())??;
                Channel::start(stream, addr, dialer, remaining(), MAX_IN_FLIGHT).await
            }
        }
    }

    /// Runs a channel over an already open stream to `peer`: runs the handshake (hello first,
    /// proving nothing), then spawns the reader and writer tasks. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// The errors of [`handshake::connect`], with the peer named; [`Error::InvalidData`] if the
    /// peer announces itself as a client: a channel only talks to nodes.
    pub async fn from_stream<S>(
        stream: S,
        peer: SocketAddr,
        role: Role,
        limits: Limits,
        handshake_timeout: Duration,
    ) -> Result<Channel>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let dialer = Dialer::open(role, limits);
        Channel::start(stream, peer, &dialer, handshake_timeout, MAX_IN_FLIGHT).await
    }

    /// [`Channel::from_stream`] with the dialer's role, credential and limits (its TLS, if any,
    /// already spoken over `stream`) and the in-flight bound as parameters.
    async fn start<S>(
        mut stream: S,
        peer: SocketAddr,
        dialer: &Dialer,
        handshake_timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Channel>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let limits = dialer.limits;
        handshake::connect(
            &mut stream,
            dialer.role,
            &dialer.credential,
            handshake_timeout,
        )
        .await
        .map_err(|e| match e {
            Error::Io(m) | Error::Unavailable(m) => {
                Error::Unreachable(format!("{peer}: handshake failed: {m}"))
            }
            Error::InvalidData(m) => Error::InvalidData(format!("{peer}: {m}")),
            Error::Timeout(m) => Error::Timeout(format!("{peer}: {m}")),
            Error::Unauthorized(m) => Error::Unauthorized(format!("{peer}: {m}")),
            other => other,
        })?;
        let (rd, wr) = tokio::io::split(stream);

        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            peer,
            state: Mutex::default(),
            closed,
        });
        let (outbound, queue) = mpsc::channel(max_in_flight);
        let reader = FrameReader::new(rd, limits.max_frame);
        let writer = FrameWriter::new(wr, limits.max_frame);
        let tasks = [
            tokio::spawn(read_loop(reader, Arc::clone(&shared))).abort_handle(),
            tokio::spawn(write_loop(writer, queue, Arc::clone(&shared))).abort_handle(),
        ];
        Ok(Channel {
            inner: Arc::new(Inner {
                shared,
                limits,
                next_id: AtomicU64::new(NOTICE_ID + 1),
                slots: Semaphore::new(max_in_flight),
                outbound,
                tasks,
            }),
        })
    }

    /// Sends `req` and waits at most `timeout` for its answer (time waiting for an in-flight
    /// slot included).
    ///
    /// # Errors
    /// The error the node answered with; the errors of [`Limits::check_request`] and
    /// [`encode_frame`] before anything is sent (a request too large for a frame is
    /// [`Error::TooLarge`] with `what: "request"`, and the channel stays usable);
    /// [`Error::Timeout`] if no answer comes in time; [`Error::Unreachable`] if the connection is
    /// or becomes closed.
    pub async fn call(&self, req: Request, timeout: Duration) -> Result<Response> {
        self.inner.limits.check_request(&req)?;
        match tokio::time::timeout(timeout, self.call_untimed(req)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(format!(
                "no answer from {} within {timeout:?}",
                self.peer()
            ))),
        }
    }

    async fn call_untimed(&self, req: Request) -> Result<Response> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _slot = inner
            .slots
            .acquire()
            .await
            .map_err(|_| shared.lost("channel shut down"))?;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Said of the request, so that no caller takes it for an answer from the peer.
        let frame = encode_frame(&Envelope::Request { id, body: req }, inner.limits.max_frame)
            .map_err(|e| said_of("request", e))?;
        let (answer, answered) = oneshot::channel();
        {
            let mut state = shared.state();
            if let Some(reason) = &state.closed {
                return Err(shared.lost(reason));
            }
            state.pending.insert(id, answer);
        }
        let _entry = PendingEntry { shared, id };
        inner
            .outbound
            .send(frame)
            .await
            .map_err(|_| shared.lost("writer stopped"))?;
        answered
            .await
            .unwrap_or_else(|_| Err(shared.lost("the call's entry vanished")))
    }

    /// Whether the connection has closed. A closed channel fails every call with
    /// [`Error::Unreachable`]; drop it and connect again.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.state().closed.is_some()
    }

    /// The address of the node at the other end.
    pub fn peer(&self) -> SocketAddr {
        self.inner.shared.peer
    }

    /// The limits this channel enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.shared.state();
        f.debug_struct("Channel")
            .field("peer", &self.inner.shared.peer)
            .field("pending", &state.pending.len())
            .field("closed", &state.closed)
            .finish()
    }
}

/// The reader task: dispatches responses to their calls until the connection ends.
async fn read_loop<R: AsyncRead + Unpin>(mut reader: FrameReader<R>, shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    let reason = loop {
        let frame = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return,
            frame = reader.read_frame() => frame,
        };
        match frame {
            Ok(Some(Envelope::Response {
                id: NOTICE_ID,
                body,
            })) => {
                break match body {
                    Err(e) => format!("the node closed the connection: {e}"),
                    Ok(_) => "the node sent a notice that is not an error".into(),
                };
            }
            Ok(Some(Envelope::Response { id, body })) => shared.complete(id, body),
            Ok(Some(Envelope::Request { .. })) => {
                break "the node sent a request on a channel that only sends them".into();
            }
            Ok(None) => break "closed by the node".into(),
            Err(e) => break e.to_string(),
        }
    };
    shared.close(reason);
}

/// The writer task: writes queued frames, one flush per batch, until the channel is dropped or
/// the connection ends.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut closed = shared.closed.subscribe();
    let result: Result<()> = async {
        loop {
            let frame = tokio::select! {
                _ = closed.wait_for(|closed| *closed) => return Ok(()),
                frame = queue.recv() => frame,
            };
            // None: every Channel handle is gone, and this task is about to be aborted.
            let Some(frame) = frame else { return Ok(()) };
            writer.feed_encoded(&frame).await?;
            while let Ok(frame) = queue.try_recv() {
                writer.feed_encoded(&frame).await?;
            }
            writer.flush().await?;
        }
    }
    .await;
    if let Err(e) = result {
        shared.close(format!("write failed: {e}"));
    }
}

/// An I/O error as a short lowercase phrase ("connection refused"), without the OS error code.
fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
