//! Who may talk to a node, and what each may ask: the cluster secret, client tokens, and the
//! access a connection is granted.
//!
//! A node knows its peers by a **cluster secret** shared by every node of the ring, and its
//! clients by **tokens**, each a name and a secret of its own with an [`Access`]: read-only or
//! read-write. Neither is ever sent: the handshake ([`crate::wire::handshake`]) proves knowledge
//! of one by an HMAC-SHA256 over both sides' hellos and fresh nonces, in both directions, so a
//! recorded handshake is worth nothing on another connection and a node that does not hold the
//! secret cannot pass for one.
//!
//! What a connection may then send is its [`Access`], checked on every request
//! ([`Access::permits`]) against the request's [`Clearance`]: a node connection sends anything;
//! a client connection only the requests clients make (reads, writes, lookups, status), and a
//! read-only one no write. A request beyond a connection's access is answered with
//! [`Error::Forbidden`] and the connection serves on.
//!
//! Either kind of credential is optional. A node without a cluster secret takes any connection
//! that says it is a node (the loopback development setup); one without tokens takes any client
//! with read-write access. The binary refuses to listen on a non-loopback address in either
//! case unless told `--insecure`.
//!
//! File formats: a cluster secret file holds the secret (any text of at least [`MIN_SECRET`]
//! bytes, surrounding whitespace ignored; `openssl rand -hex 32` makes one). A token is written
//! `NAME:SECRET`; a node's tokens file holds one per line, after its access:
//!
//! ```text
//! # access     token
//! read-write   app:3f9c2d41a7e05b6c8d9e0f1a2b3c4d5e
//! read-only    dashboard:0a1b2c3d4e5f60718293a4b5c6d7e8f9
//! ```

use crate::error::{Error, Result};
use crate::message::Request;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// The shortest secret accepted, in bytes (128 bits if they are random bytes, 64 if hex).
pub const MIN_SECRET: usize = 16;

/// The longest secret accepted, in bytes.
pub const MAX_SECRET: usize = 1024;

/// The longest token name, in bytes.
pub const MAX_NAME: usize = 64;

/// Length of an HMAC-SHA256 proof.
pub const PROOF_LEN: usize = 32;

/// A shared secret: the cluster's, or one client token's. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret of these bytes.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if it is shorter than [`MIN_SECRET`] or longer than [`MAX_SECRET`].
    pub fn new(bytes: &[u8]) -> Result<Secret> {
        if bytes.len() < MIN_SECRET || bytes.len() > MAX_SECRET {
            return Err(Error::InvalidInput(format!(
                "a secret must be {MIN_SECRET} to {MAX_SECRET} bytes, this one is {}; \
                 make one with `openssl rand -hex 32`",
                bytes.len()
            )));
        }
        Ok(Secret(bytes.into()))
    }

    /// The secret in a file: its contents without surrounding whitespace.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the file cannot be read or the secret is too short or long.
    pub fn from_file(path: &Path) -> Result<Secret> {
        let text = read_small(path)?;
        Secret::new(text.trim().as_bytes())
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }

    fn mac(&self, label: &[u8], transcript: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(label);
        mac.update(transcript);
        mac
    }

    /// The proof that the holder of this secret took part in the exchange `transcript`, in the
    /// part `label` names.
    pub fn prove(&self, label: &[u8], transcript: &[u8]) -> [u8; PROOF_LEN] {
        self.mac(label, transcript).finalize().into_bytes().into()
    }

    /// Whether `given` is this secret, compared in constant time (through HMACs keyed by each):
    /// for the RESP port's `AUTH`, where the client sends its secret as Redis clients do.
    pub fn matches(&self, given: &[u8]) -> bool {
        const LABEL: &[u8] = b"chordkv plain secret";
        let theirs = <Hmac<Sha256> as Mac>::new_from_slice(given)
            .map(|mut mac| {
                mac.update(LABEL);
                mac.finalize().into_bytes()
            })
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        self.verify(LABEL, b"", &theirs)
    }

    /// Whether `proof` is [`Secret::prove`] of the same label and transcript; in constant time.
    pub fn verify(&self, label: &[u8], transcript: &[u8], proof: &[u8]) -> bool {
        self.mac(label, transcript).verify_slice(proof).is_ok()
    }
}

/// What a connection may ask for, granted by its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Another node of the ring: every request.
    Node,
    /// A client that may read and write.
    ReadWrite,
    /// A client that may only read (get, lookup, status).
    ReadOnly,
}

impl Access {
    /// Whether a connection with this access may send `request`.
    pub fn permits(self, request: &Request) -> bool {
        matches!(
            (self, request.clearance()),
            (Access::Node, _)
                | (Access::ReadWrite, Clearance::Read | Clearance::Write)
                | (Access::ReadOnly, Clearance::Read)
        )
    }

    /// Its name in logs, metrics and the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Access::Node => "node",
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
        }
    }

    /// The error answering a request beyond this access.
    pub fn refusal(self, request: &Request) -> Error {
        let why = match request.clearance() {
            Clearance::Node => "is a node-to-node request; only an authenticated node may send it",
            Clearance::Write => "writes; this connection's token is read-only",
            Clearance::Read => "is not permitted",
        };
        Error::Forbidden(format!(
            "{} {why} (connection access: {})",
            request.kind(),
            self.name()
        ))
    }
}

/// What a request needs of the connection it arrives on ([`Request::clearance`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clearance {
    /// Reads: any client.
    Read,
    /// Writes: a read-write client.
    Write,
    /// Ring maintenance and replication: only a node.
    Node,
}

/// A client's credential: a token's name and secret. Written `NAME:SECRET`; `Debug` hides the
/// secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Which token this is; the node looks its secret up by it.
    pub name: String,
    /// What proves it.
    pub secret: Secret,
}

impl FromStr for Token {
    type Err = Error;

    fn from_str(text: &str) -> Result<Token> {
        let text = text.trim();
        let Some((name, secret)) = text.split_once(':') else {
            return Err(Error::InvalidInput(
                "a token is NAME:SECRET, and this one has no ':'".into(),
            ));
        };
        check_name(name)?;
        Ok(Token {
            name: name.into(),
            secret: Secret::new(secret.as_bytes())?,
        })
    }
}

impl Token {
    /// The token in a file (its only content).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the file cannot be read or does not hold one token.
    pub fn from_file(path: &Path) -> Result<Token> {
        read_small(path)?
            .parse()
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "a token's name is 1 to {MAX_NAME} letters, digits, '-', '_' or '.'; got {name:?}"
        )))
    }
}

/// The client tokens a node accepts, by name.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_name: HashMap<String, (Secret, Access)>,
}

impl FromStr for Tokens {
    type Err = Error;

    /// Parses a tokens file: one `ACCESS NAME:SECRET` per line, `#` comments and blank lines
    /// ignored.
    fn from_str(text: &str) -> Result<Tokens> {
        let mut by_name = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |e: Error| Error::InvalidInput(format!("line {}: {e}", n + 1));
            let (access, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
                at(Error::InvalidInput(
                    "expected `read-write NAME:SECRET` or `read-only NAME:SECRET`".into(),
                ))
            })?;
            let access = match access {
                "read-write" => Access::ReadWrite,
                "read-only" => Access::ReadOnly,
                other => {
                    return Err(at(Error::InvalidInput(format!(
                        "unknown access {other:?}: read-write or read-only"
                    ))));
                }
            };
            let token: Token = token.parse().map_err(at)?;
            if by_name.contains_key(&token.name) {
                return Err(at(Error::InvalidInput(format!(
                    "token {:?} is listed twice",
                    token.name
                ))));
            }
            by_name.insert(token.name, (token.secret, access));
        }
        if by_name.is_empty() {
            return Err(Error::InvalidInput("no tokens in the tokens file".into()));
        }
        Ok(Tokens { by_name })
    }
}

impl Tokens {
    /// The tokens in a file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file and line of the first problem.
    pub fn from_file(path: &Path) -> Result<Tokens> {
        read_small(path)?
            .parse()
            .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))
    }

    /// The secret and access of the token named `name`.
    pub fn get(&self, name: &str) -> Option<(&Secret, Access)> {
        self.by_name.get(name).map(|(s, a)| (s, *a))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none (never true of a parsed file).
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What a node asks of whoever connects to it.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    /// Peers must prove this; `None`: any connection saying it is a node is one.
    pub cluster: Option<Secret>,
    /// Clients must prove one of these; `None`: every client may read and write.
    pub tokens: Option<Arc<Tokens>>,
}

/// Reads a credentials file, refusing one too large to be one.
fn read_small(path: &Path) -> Result<String> {
    const MAX_FILE: u64 = 1 << 20;
    let cannot = |e: std::io::Error| Error::InvalidInput(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > MAX_FILE {
        return Err(Error::InvalidInput(format!(
            "{}: {size} bytes is too large for a credentials file",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(cannot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn proofs_depend_on_the_secret_the_label_and_the_transcript() {
        let s = Secret::new(KEY.as_bytes()).expect("secret");
        let other = Secret::new(b"another secret of enough bytes").expect("secret");
        let proof = s.prove(b"connector", b"transcript");
        assert!(s.verify(b"connector", b"transcript", &proof));
        assert!(!other.verify(b"connector", b"transcript", &proof));
        assert!(!s.verify(b"acceptor", b"transcript", &proof));
        assert!(!s.verify(b"connector", b"transcripT", &proof));
        assert!(!s.verify(b"connector", b"transcript", &proof[..31]));
        assert!(s.matches(KEY.as_bytes()));
        assert!(!s.matches(b"another secret of enough bytes"));
        assert!(!s.matches(&KEY.as_bytes()[..31]));
        assert!(!s.matches(b""));
    }

    #[test]
    fn short_secrets_and_bad_tokens_are_refused() {
        assert!(Secret::new(b"short").is_err());
        assert!(format!("{:?}", Secret::new(KEY.as_bytes())).contains("32 bytes"));
        assert!(!format!("{:?}", Secret::new(KEY.as_bytes())).contains(KEY));
        assert!("noseparator".parse::<Token>().is_err());
        assert!(format!(":{KEY}").parse::<Token>().is_err());
        assert!(format!("bad name:{KEY}").parse::<Token>().is_err());
        assert!("app:short".parse::<Token>().is_err());
        let t: Token = format!(" app:{KEY}\n").parse().expect("token");
        assert_eq!(t.name, "app");
        assert_eq!(t.secret, Secret::new(KEY.as_bytes()).expect("secret"));
    }

    #[test]
    fn a_tokens_file_lists_access_and_token_per_line() {
        let text = format!(
            "# tokens\nread-write app:{KEY}\n\n  read-only   dash:{KEY}x  # the dashboard\n"
        );
        let tokens: Tokens = text.parse().expect("tokens");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.get("app").map(|(_, a)| a), Some(Access::ReadWrite));
        assert_eq!(tokens.get("dash").map(|(_, a)| a), Some(Access::ReadOnly));
        assert!(tokens.get("nobody").is_none());
        for bad in [
            String::new(),
            "# nothing\n".into(),
            format!("admin app:{KEY}"),
            format!("read-write app:{KEY}\nread-only app:{KEY}"),
            "read-write".into(),
        ] {
            assert!(bad.parse::<Tokens>().is_err(), "{bad:?} parsed");
        }
        let e = format!("read-write app:{KEY}\nwrite x:{KEY}")
            .parse::<Tokens>()
            .expect_err("bad access");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn access_follows_the_requests_clearance() {
        let get = Request::Get {
            key: b"k".to_vec(),
            r: None,
            session: None,
        };
        let put = Request::Put {
            key: b"k".to_vec(),
            value: vec![],
            context: Default::default(),
            w: None,
            session: None,
            mode: Default::default(),
        };
        let transfer = Request::Transfer {
            from: crate::message::NodeRef {
                id: crate::id::Id::hash(b"n"),
                addr: "127.0.0.1:1".parse().expect("addr"),
            },
            items: vec![],
            deletes: vec![b"k".to_vec()],
            leaving: false,
        };
        for (access, want) in [
            (Access::Node, [true, true, true]),
            (Access::ReadWrite, [true, true, false]),
            (Access::ReadOnly, [true, false, false]),
        ] {
            let got = [&get, &put, &transfer].map(|r| access.permits(r));
            assert_eq!(got, want, "{access:?}");
        }
        let e = Access::ReadWrite.refusal(&transfer);
        assert!(
            matches!(&e, Error::Forbidden(m) if m.contains("transfer")),
            "{e}"
        );
    }
}
