//! The Redis protocol gateway: a second port speaking RESP2 and RESP3, so `redis-cli`,
//! `redis-benchmark` and the Redis client library of any language read and write the ring.
//!
//! SHAPE
//!
//! [`accept_loop`] takes connections on the RESP port; each is served by one task that reads
//! bytes, cuts them into commands ([`frame::Decoder`]), executes each in turn
//! ([`command`]) and writes the replies ([`frame::Reply`]), a pipelined batch's replies in one
//! write. A command becomes the same client requests a native client sends (`Get`, `Put`,
//! `Delete`, `Lookup`, `Status`), handed to the node's core loop over a connection that lives
//! inside the process ([`crate::server::local`]): no socket, no encoding, and the same group
//! commit, so an `OK` to a `SET` leaves only once the write is durable here and stored on W
//! copies. Every key goes to its owner with the node's N, R and W, through whichever node the
//! client reached.
//!
//! SESSIONS
//!
//! Every connection is a session ([`crate::session`]): its reads never go back in time from
//! what it read and wrote, and its writes are ordered after them, whichever node owns the key
//! and whichever copies answer. A client that opens several connections (a pool) has a session
//! per connection; `CKV.SESSION GET` hands a connection's session out as an opaque blob and
//! `CKV.SESSION SET blob` continues it on another connection, through any node. A connection's
//! session keeps at most [`command::SESSION_KEYS`] keys: past that, after each command, it
//! forgets its oldest floors that every copy is known to hold (what the session essay's
//! dependency bound already leaves out first; only a partition cutting off every copy of such a
//! key could then show the connection an older state of it). So a long-lived connection never
//! fills up, and a write's cost does not grow with the keys it touched. Unstable floors are
//! kept: a connection whose writes cannot be shown stable (keys under constant writes on a ring
//! of N > 1) compacts with reads of all N copies and, failing that, is refused
//! (`ERR session full`).
//!
//! SIBLINGS AND READ-MODIFY-WRITE
//!
//! A key written concurrently through two owners (on both sides of a partition, or while its
//! range moved) holds both values as siblings; nothing is dropped. `GET` of such a key answers
//! `-CONFLICT key has N concurrent values; read them with CKV.SIBLINGS`; `CKV.SIBLINGS key`
//! returns the values and their context token, and `CKV.PUT key value token` replaces exactly
//! them.
//!
//! Writes take their meaning at the key's owner ([`crate::message::WriteMode`]). `SET`, `MSET`,
//! `DEL` and `UNLINK` *overwrite*: the owner replaces every version it holds, so writes through
//! one owner are ordered as they arrive and the last stands, as in Redis. The read-modify-write
//! commands (`INCR` and kin, `APPEND`, `SETRANGE`, `SETNX`, `SET … NX|XX|GET`, `GETSET`,
//! `GETDEL`) read the key, compute, and write back *if unchanged*: the owner applies the write
//! only if nothing was written since that read, else the gateway reads and tries again (up to
//! [`command::MAX_ATTEMPTS`] times). In a stable ring every write of a key passes through its
//! one owner, so these commands are atomic there: two `INCR`s never both read 5. When the owner
//! changes (a crash, a join, a partition), the new owner decides from its own copy, which may
//! lack writes the old owner made on fewer than N copies; what the two accepted then meets when
//! copies merge as siblings, never as a silent loss, and a later `INCR` of such a key answers
//! `CONFLICT` until a `CKV.PUT` resolves it. Multi-key commands (`MSET`, `MGET`, `DEL k1 k2`)
//! are not atomic across keys.
//!
//! BOUNDS AND ACCESS
//!
//! The decoder holds at most one command's bytes ([`frame::Limits`]); an argument over the
//! node's value bound is skipped as it streams in and answered with an error, and the
//! connection serves on. Framing errors answer `-ERR Protocol error: …` and close the
//! connection, as Redis does. At most [`Config::max_connections`] connections are open at once;
//! one more is told `-ERR max number of clients reached` and closed. With a tokens file
//! (`--tokens-file`), every command but `AUTH`, `HELLO` and `QUIT` waits for `AUTH name secret`
//! (or `HELLO 3 AUTH name secret`) and answers `-NOAUTH`; a read-only token's writes answer
//! `-NOPERM`. The port speaks no TLS: the node refuses a non-loopback `--resp` without
//! `--insecure`, since a password would cross the network in the clear.
//!
//! CAVEATS
//!
//! - No TTLs: `EX`, `PX`, `EXAT`, `PXAT` and `KEEPTTL` are refused with an error saying so.
//! - One database: `SELECT 0` only.
//! - `DBSIZE` walks the ring and counts each node's live keys page by page
//!   ([`crate::message::Request::Keys`]): exact in a stable ring, a count rather than a snapshot while keys move, and it takes time
//!   in proportion to the keys. `INFO keyspace` reports the same count, at the same cost.
//! - `FLUSHALL` deletes key by key, through every node's listing of its own range; it is off
//!   unless the node runs with `--resp-flushall`, and a write racing it may survive it.

pub(crate) mod command;
pub mod frame;
mod table;

use crate::auth::{Access, Tokens};
use crate::server::local::Core;
use crate::wire::Dialer;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How the RESP port is run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address the RESP port listens on.
    pub listen: SocketAddr,
    /// Whether `FLUSHALL` and `FLUSHDB` may delete every key of the ring.
    pub allow_flushall: bool,
    /// Most open RESP connections at once.
    pub max_connections: usize,
    /// Close a connection that sends no command for this long; `None` keeps it (as Redis's
    /// default `timeout 0`).
    pub idle_timeout: Option<Duration>,
    /// How many connections at once may hold a command of more than [`SMALL_COMMAND`] bytes
    /// while it arrives; others wait for a place before they read on. With the per-connection
    /// bound of a command, this bounds what partly sent commands hold in all.
    pub large_commands: usize,
}

/// A command up to this size is read without a place among [`Config::large_commands`].
pub const SMALL_COMMAND: usize = 256 << 10;

/// How long a connection holding a place for a large command may go without sending a byte of
/// it before it is closed (so a stalled sender cannot keep the place).
const LARGE_COMMAND_STALL: Duration = Duration::from_secs(10);

/// The bounds on a connection's commands before it proves a token: enough for `AUTH` and
/// `HELLO`, so a stranger cannot make the node hold megabytes.
fn unauthenticated_limits() -> frame::Limits {
    frame::Limits {
        max_args: 16,
        max_bulk: 4 << 10,
        max_command: 16 << 10,
        max_inline: 16 << 10,
    }
}

impl Config {
    /// The RESP port on `listen` with default bounds and `FLUSHALL` off.
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            allow_flushall: false,
            max_connections: 1024,
            idle_timeout: Some(Duration::from_secs(300)),
            large_commands: 16,
        }
    }
}

/// What every RESP connection shares: the core, the bounds, who may connect, counters.
#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) config: Config,
    pub(crate) core: Core,
    pub(crate) tokens: Option<Arc<Tokens>>,
    /// How ring-wide commands reach the other nodes: as a node, with the cluster secret.
    pub(crate) dialer: Arc<Dialer>,
    /// The node's N, R and W, for `INFO` and for compacting sessions.
    pub(crate) quorums: (usize, usize, usize),
    pub(crate) rpc_timeout: Duration,
    pub(crate) started: Instant,
    pub(crate) client_ids: Arc<AtomicU64>,
    pub(crate) connected: Arc<AtomicU64>,
    pub(crate) commands: Arc<AtomicU64>,
    /// Places for connections receiving a large command ([`Config::large_commands`]).
    pub(crate) large: Arc<Semaphore>,
    /// Read-modify-write commands of one key through this node take turns on its stripe, so
    /// they do not keep failing each other's compare-and-set; the owner's check still orders
    /// them against writes through other nodes.
    pub(crate) stripes: Arc<[tokio::sync::Mutex<()>]>,
}

/// How many stripes [`Gateway::stripes`] has.
const STRIPES: usize = 1024;

impl Gateway {
    /// The gateway of a node run with `server`'s configuration, over `core`.
    pub(crate) fn new(config: Config, server: &crate::server::Config, core: Core) -> Gateway {
        let kv = &server.node.kv;
        Gateway {
            core,
            tokens: server.security.gate.tokens.clone(),
            dialer: Arc::new(server.security.dialer(server.limits)),
            quorums: (kv.replicas, kv.read_quorum, kv.write_quorum),
            rpc_timeout: Duration::from_millis(server.node.ring.rpc_timeout),
            started: Instant::now(),
            client_ids: Arc::new(AtomicU64::new(1)),
            connected: Arc::new(AtomicU64::new(0)),
            commands: Arc::new(AtomicU64::new(0)),
            large: Arc::new(Semaphore::new(config.large_commands.max(1))),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            config,
        }
    }

    /// The access a connection has before `AUTH`: none with a tokens file, else read-write.
    fn initial_access(&self) -> Option<Access> {
        match &self.tokens {
            Some(_) => None,
            None => Some(Access::ReadWrite),
        }
    }
}

/// Accept RESP connections until the task is aborted, each served by a task of its own.
pub(crate) async fn accept_loop(listener: TcpListener, gateway: Gateway) {
    let places = Arc::new(Semaphore::new(gateway.config.max_connections.max(1)));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            metrics::counter!("chordkv_connections_refused_total", "why" => "resp_budget")
                .increment(1);
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway.connected.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("chordkv_connections_total", "role" => "resp").increment(1);
            serve_connection(stream, peer, &gateway).await;
            gateway.connected.fetch_sub(1, Ordering::Relaxed);
            drop(place);
        });
    }
}

/// How much a connection reads at once.
const READ_CHUNK: usize = 64 << 10;

/// One RESP connection: read, decode, execute, reply, until the client closes, says `QUIT`,
/// breaks the framing, or idles past the timeout.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, gateway: &Gateway) {
    let conn = match gateway.core.open().await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = stream.write_all(format!("-ERR {e}\r\n").as_bytes()).await;
            return;
        }
    };
    let limits = frame::Limits {
        max_bulk: gateway
            .core
            .limits()
            .max_value
            .max(gateway.core.limits().max_key),
        ..frame::Limits::default()
    };
    let mut client = command::Client::new(gateway.clone(), conn, peer);
    let mut decoder = frame::Decoder::new(if client.authenticated() {
        limits
    } else {
        unauthenticated_limits()
    });
    // The place among the large commands this connection holds, while it holds one.
    let mut large: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        // Execute every whole command buffered, then send their replies in one write.
        let mut closing = false;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame::Item::Command(args))) => {
                    gateway.commands.fetch_add(1, Ordering::Relaxed);
                    let before = client.authenticated();
                    let (reply, flow) = client.execute(args).await;
                    if !before && client.authenticated() {
                        // Between commands the decoder holds nothing: the new bounds apply
                        // from the next command on.
                        decoder = frame::Decoder::new(limits);
                    }
                    reply.encode(client.protocol(), &mut output);
                    if flow == command::Flow::Close {
                        closing = true;
                        break;
                    }
                }
                Ok(Some(frame::Item::Refused(why))) => {
                    frame::Reply::error(why).encode(client.protocol(), &mut output);
                }
                Ok(None) => break,
                Err(e) => {
                    metrics::counter!("chordkv_bad_frames_total").increment(1);
                    debug!(%peer, error = %e, "bad RESP frame; closing the connection");
                    e.reply().encode(client.protocol(), &mut output);
                    closing = true;
                    break;
                }
            }
            if output.len() >= READ_CHUNK {
                if stream.write_all(&output).await.is_err() {
                    return;
                }
                output.clear();
            }
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if closing {
            let _ = stream.shutdown().await;
            return;
        }
        // A command growing past SMALL_COMMAND reads on only with a place among the large ones.
        let pending = input.len() + decoder.held();
        if pending <= SMALL_COMMAND {
            large = None;
        } else if large.is_none() {
            let place = Arc::clone(&gateway.large).acquire_owned();
            match tokio::time::timeout(LARGE_COMMAND_STALL, place).await {
                Ok(Ok(place)) => large = Some(place),
                _ => {
                    let _ = stream
                        .write_all(b"-ERR busy: too many large commands arriving at once\r\n")
                        .await;
                    return;
                }
            }
        }
        input.reserve(READ_CHUNK);
        let read = stream.read_buf(&mut input);
        let idle = match (&large, gateway.config.idle_timeout) {
            (Some(_), _) => Some(LARGE_COMMAND_STALL),
            (None, idle) => idle,
        };
        let n = match idle {
            Some(idle) => match tokio::time::timeout(idle, read).await {
                Ok(n) => n,
                Err(_) => {
                    debug!(%peer, "RESP connection idle; closing it");
                    return;
                }
            },
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
