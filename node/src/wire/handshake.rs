//! The handshake: hellos, then a mutual challenge–response that proves the cluster secret or a
//! client token ([`crate::auth`]) without sending it.
//!
//! ```text
//! connector                                         acceptor
//!   hello_c (7: magic, version, role) + nonce_c (16)  ->
//!                     <-  hello_s (7) + required (1: 0 or 1) + nonce_s (16)
//!   name_len (1) + name (0..=64) + proof_c (32)       ->
//!                     <-  0 + proof_s (32)             (accepted)
//!                     <-  1 + reason_len (u16 BE) + reason   (refused; then it closes)
//! ```
//!
//! `required` says whether the acceptor wants a proof for the connector's role: the cluster
//! secret for a node, a client token for a client. The name is the token's (empty for a node).
//! Both proofs are HMAC-SHA256 under that secret over the whole transcript so far (both hellos,
//! both nonces, `required`, the name), with a label for each direction so that neither can be
//! reflected as the other. The nonces are fresh random bytes, so a recorded handshake fails on
//! any other connection, in either direction. Without a proof required, both proofs are zeros
//! and are not checked.
//!
//! A connector that holds a credential insists on a node that asks for it (`required` = 1) and
//! proves it holds the same secret: a downgrade to an open handshake, or an impostor, fails
//! with [`Error::Unauthorized`] before a request is sent. One without a credential asked for a
//! proof fails the same way, with a message saying which flag supplies it.
//!
//! On a version mismatch the acceptor answers with its hello alone and closes, so the connector
//! can name both versions ([`Error::VersionMismatch`]). The whole exchange runs under one
//! deadline on each side.

use super::{Role, encode_hello, read_exact_or_hang_up, read_hello};
use crate::auth::{Access, Gate, MAX_NAME, PROOF_LEN, Secret, Token};
use crate::error::{Error, Result};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 16;

/// The longest refusal reason an acceptor sends.
pub const MAX_REASON: usize = 256;

const CONNECTOR: &[u8] = b"chordkv handshake v2: connector proof";
const ACCEPTOR: &[u8] = b"chordkv handshake v2: acceptor proof";

/// What a connecting side proves in the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Credential {
    /// Nothing: only a node that asks for no proof will take the connection.
    #[default]
    None,
    /// The cluster secret, as a node.
    Cluster(Secret),
    /// A client token.
    Token(Token),
}

impl Credential {
    fn secret_and_name(&self) -> Option<(&Secret, &str)> {
        match self {
            Credential::None => None,
            Credential::Cluster(s) => Some((s, "")),
            Credential::Token(t) => Some((&t.secret, t.name.as_str())),
        }
    }
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::Rng::fill(&mut rand::rng(), &mut n);
    n
}

fn timed_out(timeout: Duration) -> Error {
    Error::Timeout(format!("handshake not complete within {timeout:?}"))
}

/// The connecting side's handshake, as `role` proving `credential`, within `timeout`.
///
/// # Errors
/// [`Error::Unauthorized`] if the node refuses the credential, asks for one we do not have, or
/// cannot prove it holds ours; [`Error::VersionMismatch`]; [`Error::InvalidData`] if the other
/// side is not a chordkv node; [`Error::Timeout`]; [`Error::Unavailable`] if it hangs up.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    credential: &Credential,
    timeout: Duration,
) -> Result<()> {
    let exchange = async {
        let mut transcript = Vec::with_capacity(2 * (7 + NONCE_LEN) + 2 + MAX_NAME);
        transcript.extend_from_slice(&encode_hello(role));
        transcript.extend_from_slice(&nonce());
        stream.write_all(&transcript).await?;
        stream.flush().await?;

        let theirs = read_hello(stream, timeout).await?;
        if theirs != Role::Node {
            return Err(Error::InvalidData(format!(
                "the other side announced itself as a {theirs}, not a node"
            )));
        }
        let mut rest = [0u8; 1 + NONCE_LEN];
        read_exact_or_hang_up(stream, &mut rest).await?;
        let required = match rest[0] {
            0 => false,
            1 => true,
            other => {
                return Err(Error::InvalidData(format!(
                    "bad handshake: proof flag {other}"
                )));
            }
        };
        transcript.extend_from_slice(&encode_hello(Role::Node));
        transcript.extend_from_slice(&rest);
        let held = credential.secret_and_name();
        let what = match role {
            Role::Node => "the cluster secret (--cluster-secret-file)",
            Role::Client => "a client token (--token-file)",
        };
        let (secret, name) = match (required, held) {
            (true, None) => {
                return Err(Error::Unauthorized(format!(
                    "the node requires {what}, and none was given"
                )));
            }
            (false, Some(_)) => {
                return Err(Error::Unauthorized(format!(
                    "the node does not authenticate {role}s: it cannot prove it holds {what}, \
                     so it is not talked to"
                )));
            }
            (_, Some((secret, name))) => (Some(secret), name),
            (false, None) => (None, ""),
        };
        let name_len = u8::try_from(name.len())
            .ok()
            .filter(|n| usize::from(*n) <= MAX_NAME)
            .ok_or_else(|| Error::InvalidInput("token name too long".into()))?;
        transcript.push(name_len);
        transcript.extend_from_slice(name.as_bytes());
        let proof = secret.map_or([0; PROOF_LEN], |s| s.prove(CONNECTOR, &transcript));
        let mut message = Vec::with_capacity(1 + name.len() + PROOF_LEN);
        message.push(name_len);
        message.extend_from_slice(name.as_bytes());
        message.extend_from_slice(&proof);
        stream.write_all(&message).await?;
        stream.flush().await?;

        let mut status = [0u8; 1];
        read_exact_or_hang_up(stream, &mut status).await?;
        match status[0] {
            0 => {
                let mut theirs = [0u8; PROOF_LEN];
                read_exact_or_hang_up(stream, &mut theirs).await?;
                if let Some(secret) = secret {
                    if !secret.verify(ACCEPTOR, &transcript, &theirs) {
                        return Err(Error::Unauthorized(format!(
                            "the node could not prove it holds {what}: not a member of this \
                             cluster, or an impostor"
                        )));
                    }
                }
                Ok(())
            }
            1 => {
                let mut len = [0u8; 2];
                read_exact_or_hang_up(stream, &mut len).await?;
                let len = usize::from(u16::from_be_bytes(len)).min(MAX_REASON);
                let mut reason = vec![0u8; len];
                read_exact_or_hang_up(stream, &mut reason).await?;
                Err(Error::Unauthorized(format!(
                    "refused by the node: {}",
                    String::from_utf8_lossy(&reason)
                )))
            }
            other => Err(Error::InvalidData(format!("bad handshake: status {other}"))),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

/// The accepting side's handshake, checking the connector against `gate`, within `timeout`.
/// Returns the role the connector announced and the access it proved. A refused connector has
/// been told why (except on a timeout or a hang-up) and the stream is only good for closing.
///
/// # Errors
/// [`Error::Unauthorized`] for a missing or wrong proof; the errors of [`read_hello`];
/// [`Error::Timeout`].
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    gate: &Gate,
    timeout: Duration,
) -> Result<(Role, Access)> {
    let exchange = async {
        let role = match read_hello(stream, timeout).await {
            Ok(role) => role,
            Err(e @ Error::VersionMismatch { .. }) => {
                // Our hello alone lets the peer say which versions differ.
                let _ = stream.write_all(&encode_hello(Role::Node)).await;
                let _ = stream.flush().await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut transcript = Vec::with_capacity(2 * (7 + NONCE_LEN) + 2 + MAX_NAME);
        transcript.extend_from_slice(&encode_hello(role));
        let mut theirs = [0u8; NONCE_LEN];
        read_exact_or_hang_up(stream, &mut theirs).await?;
        transcript.extend_from_slice(&theirs);
        let required = match role {
            Role::Node => gate.cluster.is_some(),
            Role::Client => gate.tokens.is_some(),
        };
        let start = transcript.len();
        transcript.extend_from_slice(&encode_hello(Role::Node));
        transcript.push(u8::from(required));
        transcript.extend_from_slice(&nonce());
        stream.write_all(&transcript[start..]).await?;
        stream.flush().await?;

        let mut name_len = [0u8; 1];
        read_exact_or_hang_up(stream, &mut name_len).await?;
        let name_len = usize::from(name_len[0]);
        if name_len > MAX_NAME {
            return Err(refuse(stream, "token name too long").await);
        }
        let mut name = vec![0u8; name_len];
        read_exact_or_hang_up(stream, &mut name).await?;
        let mut proof = [0u8; PROOF_LEN];
        read_exact_or_hang_up(stream, &mut proof).await?;
        transcript.push(name_len as u8);
        transcript.extend_from_slice(&name);

        let (secret, access) = match role {
            Role::Node if !required => (None, Access::Node),
            Role::Client if !required => (None, Access::ReadWrite),
            Role::Node => match (&gate.cluster, name.is_empty()) {
                (Some(secret), true) => (Some(secret), Access::Node),
                _ => return Err(refuse(stream, "a node proves the cluster secret").await),
            },
            Role::Client => {
                let known = std::str::from_utf8(&name)
                    .ok()
                    .and_then(|name| gate.tokens.as_ref()?.get(name));
                match known {
                    Some((secret, access)) => (Some(secret), access),
                    // Said as a wrong secret would be: which names exist is not told.
                    None => return Err(refuse(stream, "unknown token or wrong secret").await),
                }
            }
        };
        if let Some(secret) = secret {
            if !secret.verify(CONNECTOR, &transcript, &proof) {
                let why = match role {
                    Role::Node => "wrong cluster secret",
                    Role::Client => "unknown token or wrong secret",
                };
                return Err(refuse(stream, why).await);
            }
        }
        let mut answer = [0u8; 1 + PROOF_LEN];
        if let Some(secret) = secret {
            answer[1..].copy_from_slice(&secret.prove(ACCEPTOR, &transcript));
        }
        stream.write_all(&answer).await?;
        stream.flush().await?;
        Ok((role, access))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(timed_out(timeout)))
}

/// What a connector without a credential sends, all at once: its hello, a nonce of zeros, no
/// name and a proof of zeros. Its answers do not depend on the acceptor's, so tests and tools
/// can write it blind; an open node answers [`OPEN_ANSWER_LEN`] bytes.
pub fn open_connector_bytes(role: Role) -> Vec<u8> {
    let mut bytes = encode_hello(role).to_vec();
    bytes.extend_from_slice(&[0; NONCE_LEN]);
    bytes.push(0);
    bytes.extend_from_slice(&[0; PROOF_LEN]);
    bytes
}

/// How many bytes an open node answers [`open_connector_bytes`] with: its hello, the flag, its
/// nonce, the status and a proof of zeros.
pub const OPEN_ANSWER_LEN: usize = 7 + 1 + NONCE_LEN + 1 + PROOF_LEN;

/// Tells the connector why it is refused; returns the error to report here.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reason: &str) -> Error {
    let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut message = Vec::with_capacity(3 + reason.len());
    message.push(1);
    message.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    message.extend_from_slice(reason);
    let _ = stream.write_all(&message).await;
    let _ = stream.flush().await;
    Error::Unauthorized(String::from_utf8_lossy(reason).into_owned())
}

#[cfg(test)]
mod tests;
