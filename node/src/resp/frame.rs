//! The bytes of the Redis protocol (RESP): requests decoded from a stream, replies encoded.
//!
//! This module deals in bytes only and never does I/O, as [`crate::wire`]'s framing does: the
//! [`Decoder`] takes bytes a connection has read and yields commands; [`Reply::encode`] writes
//! the bytes of an answer. What a command means, and which reply it earns, is the gateway's
//! business. The behaviour follows Redis's own server (`networking.c`: `processMultibulkBuffer`,
//! `processInlineBuffer`; `sds.c`: `sdssplitargs`) and the protocol description at
//! <https://redis.io/docs/latest/develop/reference/protocol-spec/>.
//!
//! FRAMING
//!
//! A client sends each command as an array of bulk strings: `*<n>\r\n`, then `n` times
//! `$<len>\r\n<len bytes>\r\n`; the first argument is the command's name. Many commands may
//! arrive in one read (pipelining) and one command may be cut anywhere between reads.
//! [`Decoder::decode`] tells three outcomes apart, like mini-redis's `frame.rs`: an [`Item`]
//! (a command, or a command refused whole), "incomplete" (`Ok(None)`: read more bytes and ask
//! again) and bad data ([`FrameError`]). The decoder keeps its place between calls and consumes
//! what it has used from the caller's buffer, so the work per byte is constant however the
//! stream is cut: the outcome depends on the bytes alone, never on how they were split into
//! reads. An array announcing `n <= 0` arguments is an empty command and is skipped, as Redis
//! skips it. Anything else where an argument is expected (`:1`, `+OK`, a nested array) is bad
//! data: clients send commands, not arbitrary RESP values. After a [`FrameError`] the stream's
//! position is lost; the connection answers [`FrameError::reply`]
//! (`-ERR Protocol error: ...`) and closes, as Redis does, and the decoder only repeats the
//! error.
//!
//! INLINE COMMANDS
//!
//! A line that does not start with `*` is an inline command, so that `telnet` and `nc` can talk
//! to a node: the line up to `\n` (a `\r` before it dropped) is split into arguments as Redis's
//! `sdssplitargs` splits them. Arguments are separated by whitespace; an argument may hold
//! double-quoted parts, with the escapes `\n`, `\r`, `\t`, `\b`, `\a`, `\\`, `\"` and `\xHH`
//! (another escaped character stands for itself), and single-quoted parts, where only `\'` is
//! an escape. A closing quote must be followed by whitespace or the end of the line; that, or a
//! quote left open, is bad data ("unbalanced quotes in request"). Empty and blank lines are
//! skipped. Two departures from Redis, both about bytes no terminal sends: a NUL byte is an
//! ordinary byte (Redis's C string ends there), and the six ASCII whitespace characters all
//! separate arguments (Redis ends an unquoted argument only at space, tab, CR and LF, and keeps
//! a vertical tab or form feed inside it).
//!
//! BOUNDS
//!
//! [`Limits`] bounds what a command may make the node hold, and every bound is checked from a
//! header before the bytes it announces are buffered. Header lines (`*<n>`, `$<len>`) may be
//! [`MAX_HEADER`] bytes long. Two kinds of bound are told apart by whether breaking it loses
//! the framing:
//!
//! - An array of more than [`Limits::max_args`] arguments, a bulk length that is not a number,
//!   is negative or exceeds [`PROTO_MAX_BULK`] (Redis's `proto-max-bulk-len`, 512 MiB), a header
//!   line or an inline line ([`Limits::max_inline`]) too long: bad data, the connection closes.
//!   Redis closes on these too.
//! - An argument over [`Limits::max_bulk`], or arguments that together exceed
//!   [`Limits::max_command`]: the stream is still well framed, so the decoder discards the
//!   command's bytes as they stream in (never holding them), reads the remaining arguments'
//!   headers and discards their bytes too, and once the whole command has passed yields
//!   [`Item::Refused`] with a one-line reason. The connection answers it and serves the next
//!   command. An inline command over any of the bounds is refused the same way.
//!
//! So a connection's decoder holds at most [`Limits::max_command`] bytes of arguments (and one
//! `Vec` per argument, at most [`Limits::max_args`] of them), and leaves at most
//! [`Limits::max_pending`] bytes in the caller's buffer when it asks for more: with one read's
//! worth on top, that is all the memory a client can make a connection take, whatever it
//! announces.
//!
//! RESP2 AND RESP3
//!
//! Replies are built as [`Reply`] values and encoded for the protocol the connection speaks
//! ([`Protocol`]; RESP3 after `HELLO 3`). RESP3's own types fall back in RESP2 as Redis falls
//! back: a null is `$-1` (a null array `*-1`), a map is a flat array of keys and values, a set is
//! an array, a double is a bulk string, a boolean is the integer 1 or 0, and a verbatim string is
//! a bulk string of its text. Doubles are written in Rust's shortest form that reads back to the
//! same value (`{:?}`: `3.0`, `0.1`, `1e300`), where Redis writes `%.17g` (`3`,
//! `0.10000000000000001`); both parse to the same double. Infinities and NaN are `inf`, `-inf`
//! and `nan`, as Redis writes them. Simple strings and errors are one line by construction: a
//! CR or LF in their text is written as a space, so no reply can break the framing.
//!
//! WHY NOT THE `redis-protocol` CRATE
//!
//! The `redis-protocol` crate parses any RESP value, from a buffer holding the whole frame. A
//! server needs less and more: requests are only arrays of bulk strings (anything else should
//! be refused, not parsed), inline commands must work (the crate has none), and the bounds must
//! be checked from the headers, argument count and bulk lengths, before the bytes they announce
//! are buffered, with an oversized argument skipped as it streams in so the connection can
//! answer and serve on. The crate's decoder can do neither. The decoder here is a few hundred
//! lines and is fuzzed (`fuzz/fuzz_targets/resp.rs`).

use bytes::{Buf, BytesMut};
use std::io::Write as _;

/// The longest bulk string any client may announce, as Redis's default `proto-max-bulk-len`:
/// a longer one is bad data. Lengths up to this but over [`Limits::max_bulk`] are refused
/// without losing the framing.
pub const PROTO_MAX_BULK: usize = 512 << 20;

/// The longest header line (`*<n>`, `$<len>`), in bytes after its type byte and before its
/// `\r\n`. A 64-bit number with its sign takes 20; a longer line is bad data before its end
/// arrives, so a header never makes the decoder wait on an unbounded line.
pub const MAX_HEADER: usize = 32;

/// How many argument slots a command's announced count may reserve up front; more grow as the
/// arguments actually arrive, so a lying count costs at most this.
const PREALLOC_ARGS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Limits, items and errors
// ---------------------------------------------------------------------------------------------

/// Bounds on the commands a connection takes. See the BOUNDS section of the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in a command, its name included. A multibulk array announcing more is bad
    /// data; an inline command with more is refused.
    pub max_args: usize,
    /// Largest argument, in bytes. A larger one gets its command refused. Above
    /// [`PROTO_MAX_BULK`] it has no effect: longer bulk strings are bad data.
    pub max_bulk: usize,
    /// Most bytes of all of a command's arguments together. A command over it is refused.
    pub max_command: usize,
    /// Longest inline command line, in bytes before its `\n`. A longer one is bad data.
    pub max_inline: usize,
}

impl Default for Limits {
    /// 65536 arguments, 4 MiB an argument (the node's default value bound,
    /// [`crate::wire::Limits::max_value`]), 8 MiB a command and 64 KiB an inline line (Redis's
    /// `PROTO_INLINE_MAX_SIZE`). The gateway passes its own node's bounds.
    fn default() -> Self {
        Limits {
            max_args: 1 << 16,
            max_bulk: 4 << 20,
            max_command: 8 << 20,
            max_inline: 64 << 10,
        }
    }
}

impl Limits {
    /// The most bytes [`Decoder::decode`] leaves in the caller's buffer when it returns
    /// `Ok(None)`: an argument being received (it is taken only once whole), an inline line
    /// without its newline, or a header line.
    pub fn max_pending(&self) -> usize {
        let argument = self
            .max_bulk
            .min(self.max_command)
            .min(PROTO_MAX_BULK)
            .saturating_add(2);
        argument.max(self.max_inline).max(MAX_HEADER + 2)
    }
}

/// What [`Decoder::decode`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole command: its arguments, the command's name first, as sent (names are not
    /// case-folded). Never empty: empty commands are skipped.
    Command(Vec<Vec<u8>>),
    /// A command that was read and dropped whole because it broke a bound that does not lose the
    /// framing (an argument over [`Limits::max_bulk`], the arguments over
    /// [`Limits::max_command`], an inline command over [`Limits::max_args`]): the one-line
    /// reason, lowercase, such as `value too large: argument 2 is 5000000 bytes, this node takes
    /// at most 4194304`. Arguments are counted as Redis's `argv`, the name being argument 0.
    /// Answer it (`Reply::error(reason)`) and serve on.
    Refused(String),
}

/// Bad data: the stream's framing is lost and the connection can only be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The client broke the protocol; the text says how, in Redis's words where Redis has them
    /// (`invalid bulk length`, `expected '$', got ':'`, `unbalanced quotes in request`).
    #[error("Protocol error: {0}")]
    Protocol(String),
}

impl FrameError {
    /// The error reply to send before closing: `-ERR Protocol error: ...`, as Redis sends it.
    pub fn reply(&self) -> Reply {
        Reply::error(self)
    }
}

fn protocol(text: impl Into<String>) -> FrameError {
    FrameError::Protocol(text.into())
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A streaming decoder of client commands, one per connection.
///
/// Call [`Decoder::decode`] with the connection's read buffer after each read, and again as long
/// as it yields items; when it returns `Ok(None)`, read more bytes onto the end of the same
/// buffer. It consumes from the front of the buffer the bytes it has used.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// How many bytes at the front of the buffer are known to hold no `\n`, in an inline line
    /// still waiting for its end: so a long line arriving a byte at a time is scanned once.
    inline_scanned: usize,
}

#[derive(Debug)]
enum State {
    /// Between commands.
    Idle,
    /// Inside a multibulk command, after its `*<n>` line.
    Multibulk(Multibulk),
    /// The framing was lost; every call answers this.
    Failed(FrameError),
}

/// A multibulk command under way.
#[derive(Debug)]
struct Multibulk {
    /// Arguments announced.
    count: usize,
    /// Arguments received and kept (none once refused).
    args: Vec<Vec<u8>>,
    /// The index of the argument whose header or payload comes next.
    next: usize,
    /// The payload bytes of the arguments announced so far, the refused ones included.
    total: usize,
    /// Set once the command broke a bound: why. Its remaining bytes are then discarded.
    refused: Option<String>,
    /// Payload bytes of the current argument not yet taken (or discarded); `None` while its
    /// `$<len>` header is expected.
    payload: Option<usize>,
}

/// What one step of decoding came to.
enum Step {
    /// More bytes are needed.
    More,
    /// Progress was made (bytes consumed or a command skipped): step again.
    Again,
    /// An item is complete.
    Done(Item),
}

impl Decoder {
    /// A decoder at the start of a stream, holding commands to `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            state: State::Idle,
            inline_scanned: 0,
        }
    }

    /// The limits this decoder holds commands to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next item from the front of `buf`, consuming the bytes it used (and any empty
    /// commands before it), or `Ok(None)` if `buf` ends before the next item does: append more
    /// of the stream and call again. Bytes of a refused command are consumed as they come, so
    /// `Ok(None)` leaves at most [`Limits::max_pending`] bytes in `buf`.
    ///
    /// # Errors
    /// [`FrameError`] on bad data (see BOUNDS in the module doc for which bounds are bad data);
    /// the connection should answer [`FrameError::reply`] and close. Once it has failed, the
    /// decoder returns the same error on every call.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        loop {
            match self.step(buf) {
                Ok(Step::More) => return Ok(None),
                Ok(Step::Again) => {}
                Ok(Step::Done(item)) => return Ok(Some(item)),
                Err(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// Bytes of arguments this decoder holds for the command under way: at most
    /// [`Limits::max_command`].
    pub fn held(&self) -> usize {
        match &self.state {
            State::Multibulk(m) => m.args.iter().map(Vec::len).sum(),
            State::Idle | State::Failed(_) => 0,
        }
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, FrameError> {
        match &mut self.state {
            State::Failed(e) => Err(e.clone()),
            State::Idle => match buf.first() {
                None => Ok(Step::More),
                Some(b'*') => self.start_multibulk(buf),
                Some(_) => self.inline(buf),
            },
            State::Multibulk(m) => {
                let step = m.step(buf, &self.limits)?;
                if let Step::Done(_) = step {
                    self.state = State::Idle;
                }
                Ok(step)
            }
        }
    }

    /// Reads a `*<n>` line and starts the command it announces.
    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<Step, FrameError> {
        let Some((text, used)) = header_line(buf, "mbulk count string")? else {
            return Ok(Step::More);
        };
        let count = parse_int(text).ok_or_else(|| protocol("invalid multibulk length"))?;
        buf.advance(used);
        let Ok(count) = usize::try_from(count) else {
            return Ok(Step::Again); // n < 0: an empty command, as is n = 0 below
        };
        if count == 0 {
            return Ok(Step::Again);
        }
        if count > self.limits.max_args {
            return Err(protocol(format!(
                "invalid multibulk length: {count} arguments, this node takes at most {}",
                self.limits.max_args
            )));
        }
        self.state = State::Multibulk(Multibulk {
            count,
            args: Vec::with_capacity(count.min(PREALLOC_ARGS)),
            next: 0,
            total: 0,
            refused: None,
            payload: None,
        });
        Ok(Step::Again)
    }

    /// Takes an inline command line, if it is complete.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Step, FrameError> {
        let window = buf.len().min(self.limits.max_inline.saturating_add(1));
        let from = self.inline_scanned.min(window);
        let Some(at) = buf[from..window].iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(protocol("too big inline request"));
            }
            self.inline_scanned = window;
            return Ok(Step::More);
        };
        let end = from + at;
        let line = &buf[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_args(line)?;
        buf.advance(end + 1);
        self.inline_scanned = 0;
        if args.is_empty() {
            return Ok(Step::Again);
        }
        if args.len() > self.limits.max_args {
            return Ok(Step::Done(Item::Refused(format!(
                "too many arguments: {}, this node takes at most {}",
                args.len(),
                self.limits.max_args
            ))));
        }
        let mut total = 0usize;
        for (index, arg) in args.iter().enumerate() {
            total = total.saturating_add(arg.len());
            if let Some(reason) = refusal(&self.limits, index, arg.len(), total) {
                return Ok(Step::Done(Item::Refused(reason)));
            }
        }
        Ok(Step::Done(Item::Command(args)))
    }
}

impl Multibulk {
    fn step(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Step, FrameError> {
        let Some(left) = self.payload else {
            if self.next == self.count {
                return Ok(Step::Done(match self.refused.take() {
                    Some(reason) => Item::Refused(reason),
                    None => Item::Command(std::mem::take(&mut self.args)),
                }));
            }
            return self.header(buf, limits);
        };
        if self.refused.is_some() {
            // Discard the payload as it comes, then check its CRLF like any other.
            let gone = left.min(buf.len());
            buf.advance(gone);
            let left = left - gone;
            self.payload = Some(left);
            if left > 0 || buf.len() < 2 {
                return Ok(Step::More);
            }
            expect_crlf(buf, self.next)?;
            buf.advance(2);
        } else {
            if buf.len() < left + 2 {
                return Ok(Step::More);
            }
            expect_crlf(&buf[left..], self.next)?;
            self.args.push(buf[..left].to_vec());
            buf.advance(left + 2);
        }
        self.payload = None;
        self.next += 1;
        Ok(Step::Again)
    }

    /// Reads an argument's `$<len>` line and checks the bounds it breaks.
    fn header(&mut self, buf: &mut BytesMut, limits: &Limits) -> Result<Step, FrameError> {
        let Some(&kind) = buf.first() else {
            return Ok(Step::More);
        };
        if kind != b'$' {
            return Err(protocol(format!(
                "expected '$', got '{}'",
                kind.escape_ascii()
            )));
        }
        let Some((text, used)) = header_line(buf, "bulk count string")? else {
            return Ok(Step::More);
        };
        let len = parse_int(text)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= PROTO_MAX_BULK)
            .ok_or_else(|| protocol("invalid bulk length"))?;
        buf.advance(used);
        self.total = self.total.saturating_add(len);
        if self.refused.is_none() {
            if let Some(reason) = refusal(limits, self.next, len, self.total) {
                self.refused = Some(reason);
                self.args = Vec::new();
            }
        }
        self.payload = Some(len);
        Ok(Step::Again)
    }
}

/// Why an argument (argv index `index`, `len` bytes, arguments up to it `total` bytes) gets its
/// command refused, if it does.
fn refusal(limits: &Limits, index: usize, len: usize, total: usize) -> Option<String> {
    if len > limits.max_bulk {
        return Some(format!(
            "value too large: argument {index} is {len} bytes, this node takes at most {}",
            limits.max_bulk
        ));
    }
    if total > limits.max_command {
        return Some(format!(
            "command too large: arguments 0 to {index} come to {total} bytes, this node takes \
             at most {}",
            limits.max_command
        ));
    }
    None
}

/// The header line at the front of `buf` (its type byte first): its text between the type byte
/// and the `\r\n`, and the length of the whole line with both. `Ok(None)` if it is not complete.
fn header_line<'a>(buf: &'a [u8], what: &str) -> Result<Option<(&'a [u8], usize)>, FrameError> {
    let text = buf.get(1..).unwrap_or_default();
    let window = &text[..text.len().min(MAX_HEADER + 1)];
    match window.iter().position(|&b| b == b'\r') {
        Some(at) => match text.get(at + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((&text[..at], at + 3))),
            Some(_) => Err(protocol(format!("{what} not ended by CRLF"))),
        },
        None if text.len() > MAX_HEADER => Err(protocol(format!("too big {what}"))),
        None => Ok(None),
    }
}

/// Checks the `\r\n` after the payload of argument `index`, at the front of `rest`.
fn expect_crlf(rest: &[u8], index: usize) -> Result<(), FrameError> {
    if rest.starts_with(b"\r\n") {
        Ok(())
    } else {
        Err(protocol(format!("argument {index} not followed by CRLF")))
    }
}

/// A decimal integer as Redis's `string2ll` reads one: an optional `-`, then digits without
/// leading zeros (`0` itself aside), within `i64`.
fn parse_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'1'..=b'9', ..] => {}
        _ => return None,
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if negative {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

/// Whitespace between inline arguments: C's `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits an inline command line into arguments, as the INLINE COMMANDS section of the module
/// doc says.
fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
    let unbalanced = || protocol("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&b| is_space(b)) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        loop {
            match line.get(i) {
                None => break,
                Some(&b) if is_space(b) => break,
                Some(&quote @ (b'"' | b'\'')) => {
                    i = if quote == b'"' {
                        double_quoted(line, i + 1, &mut arg)
                    } else {
                        single_quoted(line, i + 1, &mut arg)
                    }
                    .ok_or_else(unbalanced)?;
                    // A quoted part ends its argument, and must be followed by a space.
                    if line.get(i).is_some_and(|&b| !is_space(b)) {
                        return Err(unbalanced());
                    }
                    break;
                }
                Some(&b) => {
                    arg.push(b);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Appends the double-quoted text starting at `line[i]` (after the opening quote) to `arg`;
/// returns the index after the closing quote, or `None` if there is none.
fn double_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *line.get(i + 1)?;
                let hex = (escaped == b'x')
                    .then(|| Some((hex_digit(*line.get(i + 2)?)?, hex_digit(*line.get(i + 3)?)?)))
                    .flatten();
                if let Some((high, low)) = hex {
                    arg.push(high << 4 | low);
                    i += 4;
                } else {
                    arg.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                }
            }
            b => {
                arg.push(b);
                i += 1;
            }
        }
    }
}

/// As [`double_quoted`], for single quotes: only `\'` is an escape.
fn single_quoted(line: &[u8], mut i: usize, arg: &mut Vec<u8>) -> Option<usize> {
    loop {
        match *line.get(i)? {
            b'\'' => return Some(i + 1),
            b'\\' if line.get(i + 1) == Some(&b'\'') => {
                arg.push(b'\'');
                i += 2;
            }
            b => {
                arg.push(b);
                i += 1;
            }
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// The protocol a connection's replies are encoded in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after a client's `HELLO 3`.
    Resp3,
}

/// The format of a [`Reply::Verbatim`] string, the three letters before its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerbatimFormat {
    /// Plain text: `txt`.
    Text,
    /// Markdown: `mkd`.
    Markdown,
}

impl VerbatimFormat {
    /// The three letters RESP3 writes.
    pub fn as_str(self) -> &'static str {
        match self {
            VerbatimFormat::Text => "txt",
            VerbatimFormat::Markdown => "mkd",
        }
    }
}

/// A reply to a client, encoded for either protocol by [`Reply::encode`]. The RESP3 types fall
/// back in RESP2 as the module doc's RESP2 AND RESP3 section says.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A simple string (`+OK`). A CR or LF in it is written as a space.
    Simple(String),
    /// An error, its full text with the code word first (`ERR ...`, `WRONGTYPE ...`); see
    /// [`Reply::error`]. A CR or LF in it is written as a space.
    Error(String),
    /// An integer.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// The null (a missing key's value): `$-1` in RESP2, `_` in RESP3.
    Null,
    /// An array of replies.
    Array(Vec<Reply>),
    /// The null array: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    /// A map of key and value pairs, in the order given; a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A set, in the order given; an array in RESP2.
    Set(Vec<Reply>),
    /// A double; a bulk string of its text in RESP2.
    Double(f64),
    /// A boolean; the integer 1 or 0 in RESP2.
    Boolean(bool),
    /// A verbatim string: its format and text; a bulk string of the text in RESP2.
    Verbatim(VerbatimFormat, Vec<u8>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// An error with Redis's generic code: `-ERR <message>`.
    pub fn error(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// The reply's bytes in `proto`.
    pub fn to_bytes(&self, proto: Protocol) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(proto, &mut out);
        out
    }

    /// Appends the reply's bytes in `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Simple(text) => one_line(out, b'+', text),
            Reply::Error(text) => one_line(out, b'-', text),
            Reply::Integer(n) => header(out, b':', *n),
            Reply::Bulk(bytes) => bulk(out, bytes),
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                header(out, b'*', items.len());
                items.iter().for_each(|item| item.encode(proto, out));
            }
            Reply::Set(items) => {
                header(out, if resp3 { b'~' } else { b'*' }, items.len());
                items.iter().for_each(|item| item.encode(proto, out));
            }
            Reply::Map(pairs) => {
                if resp3 {
                    header(out, b'%', pairs.len());
                } else {
                    header(out, b'*', pairs.len() * 2);
                }
                for (key, value) in pairs {
                    key.encode(proto, out);
                    value.encode(proto, out);
                }
            }
            Reply::Double(x) => {
                let text = double_text(*x);
                if resp3 {
                    one_line(out, b',', &text);
                } else {
                    bulk(out, text.as_bytes());
                }
            }
            Reply::Boolean(b) if resp3 => {
                out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" })
            }
            Reply::Boolean(b) => header(out, b':', i64::from(*b)),
            Reply::Verbatim(format, text) if resp3 => {
                header(out, b'=', text.len() + 4);
                out.extend_from_slice(format.as_str().as_bytes());
                out.push(b':');
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(_, text) => bulk(out, text),
        }
    }
}

/// `<kind><n>\r\n`.
fn header(out: &mut Vec<u8>, kind: u8, n: impl std::fmt::Display) {
    out.push(kind);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}\r\n");
}

/// `$<len>\r\n<bytes>\r\n`.
fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `<kind><text>\r\n`, with any CR or LF in the text written as a space.
fn one_line(out: &mut Vec<u8>, kind: u8, text: &str) {
    out.push(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// A double as the module doc's RESP2 AND RESP3 section says.
fn double_text(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x:?}")
    }
}

#[cfg(test)]
mod tests;
