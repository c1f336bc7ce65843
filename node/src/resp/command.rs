//! The commands of the RESP port: each mapped onto the ring's reads and writes in one
//! connection's session (see the module essay for what each kind guarantees).
//!
//! [`Client::execute`] checks a command against the table ([`super::table`]) and against the
//! connection's access, then runs it.

use super::Gateway;
use super::frame::{Protocol, Reply, VerbatimFormat};
use super::table::{Kind, command, config, find};
use crate::auth::Access;
use crate::message::{NodeRef, NodeStatus, ReadReply, Request, Response, WriteMode};
use crate::server::local::LocalConn;
use crate::session::Session;
use crate::version::{Context, VersionVector};
use crate::walk::{RingMember, WalkEnd, walk_ring};
use crate::wire::Channel;
use crate::{Error, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a read-modify-write command reads and tries again when the key changed under it.
pub const MAX_ATTEMPTS: u32 = 100;

/// A connection's session keeps at most this many keys: past it, after each command, it
/// forgets its oldest floors that every copy holds ([`Session::forget_stable`]). A write
/// carries the session's other unstable floors and looks over all of its keys, so a session
/// that kept every key a long-lived connection touched would make each write slower.
pub const SESSION_KEYS: usize = 256;

/// How often an overwrite (`SET`) is sent again when the node cannot tell whether its own
/// retry of it was applied.
const MAX_OVERWRITE_ATTEMPTS: u32 = 8;

/// Most keys a session compaction reads (from all N copies) before one write.
const MAX_COMPACTION_READS: usize = crate::session::MAX_DEPS;

/// Most bytes of values one multi-key read (`MGET`) returns; past it the command is refused.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// Keys of an `MGET` read at once: values may be megabytes each, so a batch is small, and the
/// reply's bound is checked after each.
const READ_BATCH: usize = 16;

/// Keys of a multi-key command handed to the core at once.
const BATCH: usize = 256;

/// Most bytes of a session blob `CKV.SESSION SET` takes.
const MAX_SESSION_BLOB: usize = 1 << 20;

/// Keys per page of `DBSIZE`'s and `FLUSHALL`'s listing of a node's range.
const KEY_PAGE: u32 = 512;

/// Whether the connection goes on after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Send the reply, then close (`QUIT`).
    Close,
}

/// The error a chordkv error becomes: retryable ones as `TRYAGAIN` (what Redis answers when
/// a request may succeed later), refusals by access as `NOPERM`, the rest as `ERR`.
fn error_reply(e: &Error) -> Reply {
    let prefix = match e {
        Error::Forbidden(_) => "NOPERM",
        Error::Conflict(_) => "CONFLICT",
        e if e.is_retryable() => "TRYAGAIN",
        _ => "ERR",
    };
    Reply::Error(format!("{prefix} {e}"))
}

pub(super) fn err(text: impl Into<String>) -> Reply {
    Reply::Error(format!("ERR {}", text.into()))
}

fn syntax() -> Reply {
    err("syntax error")
}

fn not_integer() -> Reply {
    err("value is not an integer or out of range")
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk_or_null(v: Option<Vec<u8>>) -> Reply {
    v.map_or(Reply::Null, Reply::Bulk)
}

pub(super) fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// An integer as Redis reads one (`string2ll`): an optional `-`, then digits without a
/// leading zero (`0` alone excepted); no `+`, no `-0`, no spaces.
fn parse_i64(arg: &[u8]) -> Option<i64> {
    let digits = arg.strip_prefix(b"-").unwrap_or(arg);
    let canonical = match digits {
        [b'0'] => arg.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A float as `INCRBYFLOAT` takes one: no spaces around it, finite.
fn parse_f64(arg: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.is_empty() || text.trim() != text {
        return None;
    }
    let f: f64 = text.parse().ok()?;
    f.is_finite().then_some(f)
}

/// Whether a client name is one Redis takes: printable ASCII without spaces (`!` to `~`).
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// How Redis prints a float it stores: no exponent, no trailing zeros.
fn format_float(f: f64) -> String {
    let s = format!("{f}");
    if s.contains('e') {
        format!("{f:.17}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        s
    }
}

/// A key's one value: `None` if it has none, `CONFLICT` if it has siblings.
fn single(key: &[u8], read: &ReadReply) -> std::result::Result<Option<Vec<u8>>, Reply> {
    match read.values.as_slice() {
        [] => Ok(None),
        [v] => Ok(Some(v.clone())),
        many => Err(Reply::Error(format!(
            "CONFLICT {} has {} concurrent values; read them with CKV.SIBLINGS",
            text(key),
            many.len()
        ))),
    }
}

/// What a read-modify-write step decides from the value it read.
enum Step {
    /// Write this value (or delete, for `None`) if the key is unchanged, then answer this.
    Write(Option<Vec<u8>>, Reply),
    /// Write nothing; answer this.
    Answer(Reply),
}

/// Redis's substring indices: negative from the end, clamped; `None` when empty.
fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).ok()?;
    let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (fix(start), fix(end).min(len - 1));
    (len > 0 && start <= end && start < len).then_some((start as usize, end as usize))
}

/// One connection's state: its protocol, name, access and session, and its way into the core.
pub struct Client {
    gateway: Gateway,
    conn: LocalConn,
    peer: SocketAddr,
    id: u64,
    name: Option<String>,
    protocol: Protocol,
    /// `None` until a token is proven on a node with a tokens file.
    access: Option<Access>,
    session: Session,
    last_command: String,
}

impl Client {
    /// A new connection's state.
    pub(crate) fn new(gateway: Gateway, conn: LocalConn, peer: SocketAddr) -> Client {
        let id = gateway.client_ids.fetch_add(1, Ordering::Relaxed);
        Client {
            access: gateway.initial_access(),
            gateway,
            conn,
            peer,
            id,
            name: None,
            protocol: Protocol::Resp2,
            session: Session::new(),
            last_command: String::new(),
        }
    }

    /// The protocol the replies are in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Run one command: its arguments, the name first.
    pub async fn execute(&mut self, args: Vec<Vec<u8>>) -> (Reply, Flow) {
        let Some(first) = args.first() else {
            return (err("empty command"), Flow::Continue);
        };
        let name = text(first).to_ascii_lowercase();
        let Some(spec) = find(&name) else {
            let shown: Vec<String> = args[1..]
                .iter()
                .take(8)
                .map(|a| format!("'{}'", text(&a[..a.len().min(128)])))
                .collect();
            let reply = err(format!(
                "unknown command '{}', with args beginning with: {}",
                text(&first[..first.len().min(128)]),
                shown.join(" ")
            ));
            return (reply, Flow::Continue);
        };
        let n = args.len() as i64;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            let reply = err(format!("wrong number of arguments for '{name}' command"));
            return (reply, Flow::Continue);
        }
        self.last_command.clone_from(&name);
        match self.access {
            None if !matches!(spec.name, "auth" | "hello" | "quit") => {
                return (
                    Reply::Error("NOAUTH Authentication required.".into()),
                    Flow::Continue,
                );
            }
            Some(Access::ReadOnly) if spec.kind == Kind::Write => {
                let reply = Reply::Error(format!(
                    "NOPERM this connection's token is read-only; '{name}' writes"
                ));
                return (reply, Flow::Continue);
            }
            _ => {}
        }
        metrics::counter!("chordkv_resp_commands_total", "command" => spec.name).increment(1);
        if spec.name == "quit" {
            return (ok(), Flow::Close);
        }
        let reply = self.run(spec.name, &args[1..]).await;
        self.trim_session();
        (reply, Flow::Continue)
    }

    /// Keep the session within [`SESSION_KEYS`] where its floors allow.
    fn trim_session(&mut self) {
        if self.session.len() > SESSION_KEYS {
            self.session.forget_stable(SESSION_KEYS);
        }
    }

    /// Whether the connection may run commands: it proved a token, or the node asks none.
    pub fn authenticated(&self) -> bool {
        self.access.is_some()
    }

    async fn run(&mut self, name: &str, a: &[Vec<u8>]) -> Reply {
        let result = match name {
            "ping" => Ok(match a {
                [] => Reply::Simple("PONG".into()),
                [m] => Reply::Bulk(m.clone()),
                _ => return err("wrong number of arguments for 'ping' command"),
            }),
            "echo" => Ok(Reply::Bulk(a[0].clone())),
            "select" => Ok(match parse_i64(&a[0]) {
                Some(0) => ok(),
                Some(_) => err("DB index is out of range (chordkv has database 0 only)"),
                None => not_integer(),
            }),
            "hello" => Ok(self.hello(a)),
            "auth" => Ok(self.auth(a)),
            "client" => Ok(self.client(a)),
            "command" => Ok(command(a)),
            "config" => Ok(config(a)),
            "info" => self.info(a).await,
            "get" => self.get(&a[0]).await,
            "set" => self.set(a).await,
            "setnx" => self
                .set_with(&a[0], &a[1], Cond::IfAbsent, false)
                .await
                .map(|r| match r {
                    Reply::Null => Reply::Integer(0),
                    Reply::Simple(_) => Reply::Integer(1),
                    other => other,
                }),
            "getset" => self.set_with(&a[0], &a[1], Cond::Always, true).await,
            "getdel" => {
                self.update(&a[0], |old| match old {
                    None => Ok(Step::Answer(Reply::Null)),
                    Some(v) => Ok(Step::Write(None, Reply::Bulk(v.to_vec()))),
                })
                .await
            }
            "mget" => self.mget(a).await,
            "mset" => self.mset(a).await,
            "del" | "unlink" => self.del(a).await,
            "exists" => self.exists(a).await,
            "strlen" => self.read_value(&a[0]).await.map(|v| match v {
                Ok(v) => Reply::Integer(v.map_or(0, |v| v.len() as i64)),
                Err(reply) => reply,
            }),
            "type" => self.read_value(&a[0]).await.map(|v| match v {
                Ok(Some(_)) => Reply::Simple("string".into()),
                Ok(None) => Reply::Simple("none".into()),
                Err(reply) => reply,
            }),
            "getrange" => {
                let (Some(start), Some(end)) = (parse_i64(&a[1]), parse_i64(&a[2])) else {
                    return not_integer();
                };
                self.read_value(&a[0]).await.map(|v| match v {
                    Ok(v) => {
                        let v = v.unwrap_or_default();
                        Reply::Bulk(
                            range(v.len(), start, end)
                                .map_or(Vec::new(), |(s, e)| v[s..=e].to_vec()),
                        )
                    }
                    Err(reply) => reply,
                })
            }
            "append" => {
                let max = self.gateway.core.limits().max_value;
                let tail = a[1].clone();
                self.update(&a[0], |old| {
                    let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
                    if v.len() + tail.len() > max {
                        return Err(too_large(v.len() + tail.len(), max));
                    }
                    v.extend_from_slice(&tail);
                    let len = v.len() as i64;
                    Ok(Step::Write(Some(v), Reply::Integer(len)))
                })
                .await
            }
            "setrange" => self.setrange(a).await,
            "incr" => self.incr_by(&a[0], 1).await,
            "decr" => self.incr_by(&a[0], -1).await,
            "incrby" | "decrby" => {
                let Some(by) = parse_i64(&a[1]) else {
                    return not_integer();
                };
                let by = if name == "decrby" {
                    match by.checked_neg() {
                        Some(b) => b,
                        None => return err("decrement would overflow"),
                    }
                } else {
                    by
                };
                self.incr_by(&a[0], by).await
            }
            "incrbyfloat" => self.incr_by_float(a).await,
            "dbsize" => self.dbsize().await,
            "flushall" | "flushdb" => self.flushall(a).await,
            "ckv.siblings" => self.siblings(&a[0]).await,
            "ckv.put" => self.ckv_put(a).await,
            "ckv.lookup" => self.lookup(&a[0]).await,
            "ckv.ring" => self.ring().await,
            "ckv.session" => Ok(self.session_command(a)),
            _ => Ok(err(format!("'{name}' is in the table but not served"))),
        };
        result.unwrap_or_else(|e| error_reply(&e))
    }

    // ------------------------------------------------------------------ connection

    fn hello(&mut self, a: &[Vec<u8>]) -> Reply {
        let mut protocol = self.protocol;
        let mut rest = a;
        if let Some((version, tail)) = a.split_first() {
            protocol = match parse_i64(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => {
                    return Reply::Error("NOPROTO unsupported protocol version".into());
                }
                None => return err("Protocol version is not an integer or out of range"),
            };
            rest = tail;
        }
        // Every option is checked before any takes effect, as Redis does.
        let mut name = None;
        let mut credentials = None;
        while let Some((option, tail)) = rest.split_first() {
            match (text(option).to_ascii_lowercase().as_str(), tail) {
                ("auth", [user, pass, more @ ..]) => {
                    credentials = Some([user.clone(), pass.clone()]);
                    rest = more;
                }
                ("setname", [n, more @ ..]) => {
                    if !valid_name(n) {
                        return err(
                            "Client names cannot contain spaces, newlines or special characters.",
                        );
                    }
                    name = Some(text(n));
                    rest = more;
                }
                _ => return syntax(),
            }
        }
        if let Some(credentials) = credentials {
            if let Reply::Error(e) = self.auth(&credentials) {
                return Reply::Error(e);
            }
        }
        if self.access.is_none() {
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time"
                    .into(),
            );
        }
        if let Some(n) = name {
            self.name = Some(n);
        }
        self.protocol = protocol;
        let proto = match protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        let pair = |k: &str, v: Reply| (Reply::Bulk(k.into()), v);
        Reply::Map(vec![
            pair("server", Reply::Bulk(b"redis".to_vec())),
            pair("version", Reply::Bulk(REDIS_VERSION.into())),
            pair("proto", Reply::Integer(proto)),
            pair("id", Reply::Integer(self.id as i64)),
            pair("mode", Reply::Bulk(b"standalone".to_vec())),
            pair("role", Reply::Bulk(b"master".to_vec())),
            pair("modules", Reply::Array(vec![])),
        ])
    }

    fn auth(&mut self, a: &[Vec<u8>]) -> Reply {
        let Some(tokens) = &self.gateway.tokens else {
            return err(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
        };
        // `AUTH name secret`, or `AUTH name:secret` as a token is written.
        let (name, secret) = match a {
            [user, pass] => (text(user), pass.clone()),
            [token] => {
                let token = text(token);
                match token.split_once(':') {
                    Some((n, s)) => (n.to_string(), s.as_bytes().to_vec()),
                    None => (String::new(), token.into_bytes()),
                }
            }
            _ => return syntax(),
        };
        match tokens.get(&name) {
            Some((expected, access)) if expected.matches(&secret) => {
                self.access = Some(access);
                ok()
            }
            _ => {
                metrics::counter!("chordkv_handshakes_failed_total", "why" => "resp_auth")
                    .increment(1);
                Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
            }
        }
    }

    fn client(&mut self, a: &[Vec<u8>]) -> Reply {
        let sub = text(&a[0]).to_ascii_lowercase();
        match (sub.as_str(), &a[1..]) {
            ("setname", [n]) => {
                if !valid_name(n) {
                    return err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                let n = text(n);
                self.name = (!n.is_empty()).then_some(n);
                ok()
            }
            ("getname", []) => bulk_or_null(self.name.clone().map(String::into_bytes)),
            ("id", []) => Reply::Integer(self.id as i64),
            ("info", []) => Reply::Bulk(self.client_line().into_bytes()),
            ("list", _) => Reply::Bulk(self.client_line().into_bytes()),
            ("setinfo", [_, _]) => ok(),
            _ => err(format!(
                "unknown subcommand or wrong number of arguments for 'client|{sub}'"
            )),
        }
    }

    fn client_line(&self) -> String {
        let proto = match self.protocol {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        };
        format!(
            "id={} addr={} laddr={} name={} db=0 cmd={} resp={} session-keys={}\n",
            self.id,
            self.peer,
            self.gateway.config.listen,
            self.name.as_deref().unwrap_or(""),
            self.last_command,
            proto,
            self.session.len()
        )
    }

    fn session_command(&mut self, a: &[Vec<u8>]) -> Reply {
        match (text(&a[0]).to_ascii_lowercase().as_str(), &a[1..]) {
            ("get", []) => Reply::Bulk(self.session.to_bytes()),
            ("set", [blob]) if blob.len() > MAX_SESSION_BLOB => err(format!(
                "a session blob is at most {MAX_SESSION_BLOB} bytes, this one is {}",
                blob.len()
            )),
            ("set", [blob]) => match Session::from_bytes(blob) {
                Ok(s) if s.len() > crate::session::MAX_KEYS => err(format!(
                    "the session holds {} keys, more than the {} a session may",
                    s.len(),
                    crate::session::MAX_KEYS
                )),
                Ok(s) => {
                    let valid = s.iter().try_for_each(|(_, floor, _)| floor.validate());
                    match valid {
                        Ok(()) => {
                            self.session = s;
                            ok()
                        }
                        Err(e) => error_reply(&e),
                    }
                }
                Err(e) => error_reply(&e),
            },
            ("reset", []) => {
                self.session = Session::new();
                ok()
            }
            _ => err("CKV.SESSION GET | SET <blob> | RESET"),
        }
    }

    // ------------------------------------------------------------------ reads and writes

    /// Make room in the session for `key`: at the key bound, forget the oldest stable floors.
    fn admit(&mut self, key: &[u8]) -> Result<()> {
        if self.session.admit(key).is_err() {
            self.session
                .forget_stable(crate::session::MAX_KEYS.saturating_sub(1));
        }
        self.session.admit(key)
    }

    fn get_request(&mut self, key: &[u8], r: Option<u8>) -> Result<Request> {
        self.admit(key)?;
        Ok(Request::Get {
            key: key.to_vec(),
            r,
            session: Some(Box::new(self.session.floor(key))),
        })
    }

    fn observe_read(&mut self, key: &[u8], response: Result<Response>) -> Result<ReadReply> {
        match response? {
            Response::Read(reply) => {
                self.session
                    .observe_read(key, &reply.context, &reply.deps, reply.stable);
                Ok(reply)
            }
            other => Err(unexpected("get", &other)),
        }
    }

    /// Read `key` in the session.
    async fn read(&mut self, key: &[u8]) -> Result<ReadReply> {
        let request = self.get_request(key, None)?;
        let response = self.conn.call(request).await;
        self.observe_read(key, response)
    }

    /// Read `key`'s one value; the inner error is the `CONFLICT` reply.
    async fn read_value(
        &mut self,
        key: &[u8],
    ) -> Result<std::result::Result<Option<Vec<u8>>, Reply>> {
        let read = self.read(key).await?;
        Ok(single(key, &read))
    }

    /// A write of `key` in the session, ready to send.
    async fn write_request(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &VersionVector,
        mode: WriteMode,
    ) -> Result<Request> {
        self.compact_if_needed().await;
        self.admit(key)?;
        let part = self.session.for_write(key)?;
        let context = self.session.write_context(key, context);
        let mut request = Request::write(key.to_vec(), value, context, None);
        if let Request::Put {
            session, mode: m, ..
        }
        | Request::Delete {
            session, mode: m, ..
        } = &mut request
        {
            *session = Some(Box::new(part));
            *m = mode;
        }
        Ok(request)
    }

    /// Record a write's answer in the session; returns whether the key had a live value.
    fn observe_write(&mut self, key: &[u8], response: Result<Response>) -> Result<bool> {
        match response? {
            Response::Written {
                dot,
                existed,
                stable,
            } => {
                self.session.observe_write(key, dot, stable);
                Ok(existed)
            }
            other => Err(unexpected("write", &other)),
        }
    }

    async fn write(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: &VersionVector,
        mode: WriteMode,
    ) -> Result<bool> {
        let mut attempts = 0;
        loop {
            let request = self
                .write_request(key, value.clone(), context, mode)
                .await?;
            let response = self.conn.call(request).await;
            attempts += 1;
            if mode == WriteMode::Overwrite
                && attempts < MAX_OVERWRITE_ATTEMPTS
                && matches!(response, Err(Error::Ambiguous(_)))
            {
                // The node could not tell whether its retry of this write had been applied
                // (many writes of one key through it came first). An overwrite applied twice
                // is the same write (the value stands either way), so it is sent again as a
                // new write rather than failing the SET.
                metrics::counter!("chordkv_resp_overwrite_retries_total").increment(1);
                continue;
            }
            return self.observe_write(key, response);
        }
    }

    /// At the session's dependency bound, read its oldest unstable keys from all N copies to
    /// learn which every copy holds (as the native client does); a probe that fails leaves its
    /// key unstable, and the write is then refused `session full`.
    async fn compact_if_needed(&mut self) {
        if !self.session.needs_compaction() {
            return;
        }
        let all = u8::try_from(self.gateway.quorums.0).ok();
        let mut keys = self.session.compaction_candidates();
        keys.truncate(MAX_COMPACTION_READS);
        let mut requests = Vec::new();
        for key in &keys {
            if let Ok(r) = self.get_request(key, all) {
                requests.push(r);
            }
        }
        let answers = self.conn.call_all(requests).await;
        for (key, answer) in keys.iter().zip(answers) {
            let _ = self.observe_read(key, answer);
        }
    }

    /// Read, decide, and write back only if the key is unchanged; again while it changes.
    async fn update(
        &mut self,
        key: &[u8],
        mut decide: impl FnMut(Option<&[u8]>) -> std::result::Result<Step, Reply>,
    ) -> Result<Reply> {
        let stripes = std::sync::Arc::clone(&self.gateway.stripes);
        let stripe = crate::id::Id::hash(key).0[0..2]
            .iter()
            .fold(0usize, |n, b| n << 8 | usize::from(*b))
            % stripes.len();
        let _turn = stripes[stripe].lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let read = self.read(key).await?;
            let current = match single(key, &read) {
                Ok(v) => v,
                Err(conflict) => return Ok(conflict),
            };
            let (value, reply) = match decide(current.as_deref()) {
                Ok(Step::Answer(reply)) | Err(reply) => return Ok(reply),
                Ok(Step::Write(value, reply)) => (value, reply),
            };
            match self
                .write(key, value, &read.context, WriteMode::IfUnchanged)
                .await
            {
                Ok(_) => return Ok(reply),
                Err(Error::Changed(_)) => {
                    metrics::counter!("chordkv_resp_rmw_retries_total").increment(1);
                    // Let the other writers finish: a random pause, up to twice as long each
                    // time (to 6.4 ms), so contenders spread out instead of colliding again.
                    let most = 100u64 << attempt.min(6);
                    let pause = rand::random_range(most / 2..=most);
                    tokio::time::sleep(Duration::from_micros(pause)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Reply::Error(format!(
            "TRYAGAIN {} changed under {MAX_ATTEMPTS} attempts to update it; retry",
            text(&key[..key.len().min(128)])
        )))
    }

    // ------------------------------------------------------------------ string commands

    async fn get(&mut self, key: &[u8]) -> Result<Reply> {
        Ok(match self.read_value(key).await? {
            Ok(v) => bulk_or_null(v),
            Err(conflict) => conflict,
        })
    }

    async fn set(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        let (key, value) = (&a[0], &a[1]);
        let mut cond = Cond::Always;
        let mut get = false;
        let mut options = a[2..].iter();
        while let Some(option) = options.next() {
            match text(option).to_ascii_uppercase().as_str() {
                "NX" if cond != Cond::IfPresent => cond = Cond::IfAbsent,
                "XX" if cond != Cond::IfAbsent => cond = Cond::IfPresent,
                "GET" => get = true,
                // KEEPTTL too: a client that asks to keep a TTL expects the key to have one.
                "KEEPTTL" => return Ok(no_ttls()),
                "EX" | "PX" | "EXAT" | "PXAT" if options.next().is_some() => {
                    return Ok(no_ttls());
                }
                _ => return Ok(syntax()),
            }
        }
        let reply = self.set_with(key, value, cond, get).await?;
        Ok(match reply {
            Reply::Error(_) => reply,
            _ if get => reply,
            Reply::Null => Reply::Null,
            _ => ok(),
        })
    }

    /// `SET key value` under `cond`; with `get` the reply is the old value, else `OK` (or
    /// null when `cond` did not hold).
    async fn set_with(&mut self, key: &[u8], value: &[u8], cond: Cond, get: bool) -> Result<Reply> {
        if cond == Cond::Always && !get {
            // Nothing to read first: the owner replaces whatever it holds.
            self.write(
                key,
                Some(value.to_vec()),
                &VersionVector::new(),
                WriteMode::Overwrite,
            )
            .await?;
            return Ok(ok());
        }
        self.update(key, |old| {
            let holds = match cond {
                Cond::Always => true,
                Cond::IfAbsent => old.is_none(),
                Cond::IfPresent => old.is_some(),
            };
            let reply = if get {
                bulk_or_null(old.map(<[u8]>::to_vec))
            } else if holds {
                ok()
            } else {
                Reply::Null
            };
            Ok(if holds {
                Step::Write(Some(value.to_vec()), reply)
            } else {
                Step::Answer(reply)
            })
        })
        .await
    }

    /// `MGET`, a batch of reads at a time; refused once the values pass [`MAX_REPLY_BYTES`].
    async fn mget(&mut self, keys: &[Vec<u8>]) -> Result<Reply> {
        let mut values = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for batch in keys.chunks(READ_BATCH) {
            let mut requests = Vec::with_capacity(batch.len());
            for key in batch {
                requests.push(self.get_request(key, None)?);
            }
            let answers = self.conn.call_all(requests).await;
            self.trim_session();
            for (key, answer) in batch.iter().zip(answers) {
                values.push(match self.observe_read(key, answer) {
                    Ok(read) => match single(key, &read) {
                        Ok(v) => {
                            bytes += v.as_ref().map_or(0, Vec::len);
                            bulk_or_null(v)
                        }
                        Err(conflict) => conflict,
                    },
                    Err(e) => error_reply(&e),
                });
            }
            if bytes > MAX_REPLY_BYTES {
                return Ok(err(format!(
                    "reply too large: these keys hold more than {MAX_REPLY_BYTES} bytes; ask \
                     for fewer at a time"
                )));
            }
        }
        Ok(Reply::Array(values))
    }

    async fn mset(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        if !a.len().is_multiple_of(2) {
            return Ok(err("wrong number of arguments for 'mset' command"));
        }
        let mut first_error = None;
        for batch in a.chunks(2 * BATCH) {
            let mut requests = Vec::with_capacity(batch.len() / 2);
            for pair in batch.chunks(2) {
                let request = self
                    .write_request(
                        &pair[0],
                        Some(pair[1].clone()),
                        &VersionVector::new(),
                        WriteMode::Overwrite,
                    )
                    .await?;
                requests.push(request);
            }
            let answers = self.conn.call_all(requests).await;
            for (pair, answer) in batch.chunks(2).zip(answers) {
                if let Err(e) = self.observe_write(&pair[0], answer) {
                    first_error.get_or_insert(e);
                }
            }
            self.trim_session();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(ok()),
        }
    }

    /// `DEL`: read the keys, then delete those with a value (writing no tombstone for a key
    /// that has none).
    async fn del(&mut self, keys: &[Vec<u8>]) -> Result<Reply> {
        let mut deleted = 0;
        for batch in keys.chunks(BATCH) {
            deleted += self.del_batch(batch).await?;
            self.trim_session();
        }
        Ok(Reply::Integer(deleted))
    }

    async fn del_batch(&mut self, keys: &[Vec<u8>]) -> Result<i64> {
        let mut requests = Vec::with_capacity(keys.len());
        for key in keys {
            requests.push(self.get_request(key, None)?);
        }
        let answers = self.conn.call_all(requests).await;
        let mut live = Vec::new();
        for (key, answer) in keys.iter().zip(answers) {
            let read = self.observe_read(key, answer)?;
            if !read.values.is_empty() && !live.iter().any(|(k, _)| k == key) {
                live.push((key.clone(), read.context));
            }
        }
        let mut requests = Vec::with_capacity(live.len());
        for (key, context) in &live {
            let request = self
                .write_request(key, None, context, WriteMode::Overwrite)
                .await?;
            requests.push(request);
        }
        let answers = self.conn.call_all(requests).await;
        let mut deleted = 0;
        for ((key, _), answer) in live.iter().zip(answers) {
            if self.observe_write(key, answer)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn exists(&mut self, keys: &[Vec<u8>]) -> Result<Reply> {
        let mut count = 0;
        for batch in keys.chunks(BATCH) {
            let mut requests = Vec::with_capacity(batch.len());
            for key in batch {
                requests.push(self.get_request(key, None)?);
            }
            let answers = self.conn.call_all(requests).await;
            for (key, answer) in batch.iter().zip(answers) {
                if !self.observe_read(key, answer)?.values.is_empty() {
                    count += 1;
                }
            }
            self.trim_session();
        }
        Ok(Reply::Integer(count))
    }

    async fn setrange(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        let Some(offset) = parse_i64(&a[1]).and_then(|o| usize::try_from(o).ok()) else {
            return Ok(err("offset is out of range"));
        };
        let patch = a[2].clone();
        let max = self.gateway.core.limits().max_value;
        if !patch.is_empty() && offset.saturating_add(patch.len()) > max {
            return Ok(too_large(offset.saturating_add(patch.len()), max));
        }
        self.update(&a[0], |old| {
            let mut v = old.map(<[u8]>::to_vec).unwrap_or_default();
            if patch.is_empty() {
                return Ok(Step::Answer(Reply::Integer(v.len() as i64)));
            }
            if v.len() < offset + patch.len() {
                v.resize(offset + patch.len(), 0);
            }
            v[offset..offset + patch.len()].copy_from_slice(&patch);
            let len = v.len() as i64;
            Ok(Step::Write(Some(v), Reply::Integer(len)))
        })
        .await
    }

    async fn incr_by(&mut self, key: &[u8], by: i64) -> Result<Reply> {
        self.update(key, |old| {
            let current = match old {
                None => 0,
                Some(v) => parse_i64(v).ok_or_else(not_integer)?,
            };
            let next = current
                .checked_add(by)
                .ok_or_else(|| err("increment or decrement would overflow"))?;
            Ok(Step::Write(
                Some(next.to_string().into_bytes()),
                Reply::Integer(next),
            ))
        })
        .await
    }

    async fn incr_by_float(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        let Some(by) = parse_f64(&a[1]) else {
            return Ok(err("value is not a valid float"));
        };
        self.update(&a[0], |old| {
            let current = match old {
                None => 0.0,
                Some(v) => parse_f64(v).ok_or_else(|| err("value is not a valid float"))?,
            };
            let next = current + by;
            if !next.is_finite() {
                return Err(err("increment would produce NaN or Infinity"));
            }
            let shown = format_float(next).into_bytes();
            Ok(Step::Write(Some(shown.clone()), Reply::Bulk(shown)))
        })
        .await
    }

    // ------------------------------------------------------------------ chordkv commands

    async fn siblings(&mut self, key: &[u8]) -> Result<Reply> {
        let read = self.read(key).await?;
        let token = Context::from(read.context).to_token();
        Ok(Reply::Array(vec![
            Reply::Bulk(token.into_bytes()),
            Reply::Array(read.values.into_iter().map(Reply::Bulk).collect()),
        ]))
    }

    async fn ckv_put(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        let token = text(&a[2]);
        let context = if token.is_empty() {
            VersionVector::new()
        } else {
            Context::from_token(&token)?.into()
        };
        self.write(&a[0], Some(a[1].clone()), &context, WriteMode::Context)
            .await?;
        Ok(ok())
    }

    async fn lookup(&mut self, key: &[u8]) -> Result<Reply> {
        match self
            .conn
            .call(Request::Lookup { key: key.to_vec() })
            .await?
        {
            Response::Lookup(info) => {
                let pair = |k: &str, v: Reply| (Reply::Bulk(k.into()), v);
                Ok(Reply::Map(vec![
                    pair("key-id", Reply::Bulk(info.key_id.to_string().into_bytes())),
                    pair(
                        "owner-id",
                        Reply::Bulk(info.owner.id.to_string().into_bytes()),
                    ),
                    pair(
                        "owner",
                        Reply::Bulk(info.owner.addr.to_string().into_bytes()),
                    ),
                    pair("hops", Reply::Integer(i64::from(info.hops))),
                    pair("timeouts", Reply::Integer(i64::from(info.timeouts))),
                ]))
            }
            other => Err(unexpected("lookup", &other)),
        }
    }

    /// This node's status, through the core.
    async fn status(&mut self) -> Result<NodeStatus> {
        match self.conn.call(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected("status", &other)),
        }
    }

    /// Every node of the ring with its status, in id order: a walk from this node
    /// ([`crate::walk::walk_ring`]). A node that does not answer, or a walk that does not close,
    /// is `TRYAGAIN`: a count or a flush over part of the ring would pass for the whole.
    async fn walk(&mut self) -> Result<Vec<NodeStatus>> {
        let start = self.status().await?;
        let this = &*self;
        let view = walk_ring(start, |n: NodeRef| async move {
            this.remote_status(n.addr).await
        })
        .await;
        if let Some(RingMember::Unreachable { node, error }) =
            view.nodes.iter().find(|m| m.status().is_none())
        {
            return Err(Error::Unavailable(format!(
                "the ring is changing: {node} did not answer ({error})"
            )));
        }
        if view.end != WalkEnd::Closed {
            return Err(Error::Unavailable(format!(
                "the ring is changing: the walk ended {:?}",
                view.end
            )));
        }
        let mut nodes: Vec<NodeStatus> = view
            .nodes
            .into_iter()
            .filter_map(|m| m.status().cloned())
            .collect();
        nodes.sort_by_key(|s| s.node.id);
        Ok(nodes)
    }

    async fn remote_status(&self, addr: SocketAddr) -> Result<NodeStatus> {
        let timeout = self.gateway.rpc_timeout;
        let channel = self.dial(addr).await?;
        match channel.call(Request::Status, timeout).await? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected("status", &other)),
        }
    }

    /// `DBSIZE`: the live keys of every node's own range, counted page by page
    /// ([`Request::Keys`]): exact where the ring is stable, and it takes time in proportion to
    /// the keys (each page a bounded piece of work for its node). `INFO keyspace` reports the
    /// same count.
    async fn dbsize(&mut self) -> Result<Reply> {
        Ok(Reply::Integer(self.count_keys().await?))
    }

    /// The live keys of the ring, as `DBSIZE` and `INFO keyspace` report them.
    async fn count_keys(&mut self) -> Result<i64> {
        let mut count = 0;
        for node in self.walk().await? {
            let channel = self.dial(node.node.addr).await?;
            let mut after = node.pred.map_or(node.node.id, |p| p.id);
            loop {
                let (keys, next) = self.key_page(&channel, after).await?;
                count += keys.len() as i64;
                match next {
                    Some(id) => after = id,
                    None => break,
                }
            }
        }
        Ok(count)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Channel> {
        Channel::dial(addr, &self.gateway.dialer, self.gateway.rpc_timeout).await
    }

    /// One page of a node's live keys after `after`, and where the next page starts.
    async fn key_page(
        &self,
        channel: &Channel,
        after: crate::id::Id,
    ) -> Result<(Vec<Vec<u8>>, Option<crate::id::Id>)> {
        let page = Request::Keys {
            after,
            max: KEY_PAGE,
        };
        match channel.call(page, self.gateway.rpc_timeout).await? {
            Response::Keys { keys, next } => Ok((keys, next)),
            other => Err(unexpected("keys", &other)),
        }
    }

    async fn ring(&mut self) -> Result<Reply> {
        let nodes = self.walk().await?;
        Ok(Reply::Array(
            nodes
                .iter()
                .map(|n| {
                    Reply::Array(vec![
                        Reply::Bulk(n.node.id.to_string().into_bytes()),
                        Reply::Bulk(n.node.addr.to_string().into_bytes()),
                        Reply::Integer(n.owned as i64),
                    ])
                })
                .collect(),
        ))
    }

    async fn flushall(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        if a.len() > 1
            || a.first()
                .is_some_and(|m| !matches!(text(m).to_ascii_uppercase().as_str(), "SYNC" | "ASYNC"))
        {
            return Ok(syntax());
        }
        if !self.gateway.config.allow_flushall {
            return Ok(err(
                "FLUSHALL is off on this node: it deletes every key of the ring; start the node \
                 with --resp-flushall to allow it",
            ));
        }
        let mut deleted = 0u64;
        for node in self.walk().await? {
            let channel = self.dial(node.node.addr).await?;
            let mut after = node.pred.map_or(node.node.id, |p| p.id);
            loop {
                let (keys, next) = self.key_page(&channel, after).await?;
                let mut requests = Vec::with_capacity(keys.len());
                for key in &keys {
                    // Not through the session: a session of every key would be full at once.
                    let mut delete = Request::write(key.clone(), None, VersionVector::new(), None);
                    if let Request::Delete { mode, .. } = &mut delete {
                        *mode = WriteMode::Overwrite;
                    }
                    requests.push(delete);
                }
                for answer in self.conn.call_all(requests).await {
                    if let Response::Written { existed: true, .. } = answer? {
                        deleted += 1;
                    }
                }
                match next {
                    Some(id) => after = id,
                    None => break,
                }
            }
        }
        metrics::counter!("chordkv_resp_flushed_keys_total").increment(deleted);
        Ok(ok())
    }

    async fn info(&mut self, a: &[Vec<u8>]) -> Result<Reply> {
        let wanted: Vec<String> = a.iter().map(|s| text(s).to_ascii_lowercase()).collect();
        let all = wanted.is_empty()
            || wanted
                .iter()
                .any(|w| matches!(w.as_str(), "all" | "default" | "everything"));
        let want = |s: &str| all || wanted.iter().any(|w| w == s);
        let mut out = String::new();
        if want("server") {
            out += &format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nchordkv_version:{}\r\n\
                 redis_mode:standalone\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\n\
                 tcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::process::id(),
                self.gateway.config.listen.port(),
                self.gateway.started.elapsed().as_secs()
            );
        }
        if want("clients") {
            out += &format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.gateway.connected.load(Ordering::Relaxed),
                self.gateway.config.max_connections
            );
        }
        if want("stats") {
            out += &format!(
                "# Stats\r\ntotal_commands_processed:{}\r\n\r\n",
                self.gateway.commands.load(Ordering::Relaxed)
            );
        }
        if want("ring") || want("replication") {
            let s = self.status().await?;
            let (n, r, w) = self.gateway.quorums;
            let succs: Vec<String> = s.succs.iter().map(|n| n.addr.to_string()).collect();
            out += &format!(
                "# Ring\r\nrole:master\r\nchord_node_id:{}\r\nchord_addr:{}\r\njoined:{}\r\n\
                 predecessor:{}\r\nsuccessors:{}\r\nreplicas:{n}\r\nread_quorum:{r}\r\n\
                 write_quorum:{w}\r\nkeys_stored:{}\r\nkeys_owned:{}\r\n\r\n",
                s.node.id,
                s.node.addr,
                u8::from(s.joined),
                s.pred.map_or_else(|| "-".into(), |p| p.addr.to_string()),
                succs.join(","),
                s.keys,
                s.owned
            );
        }
        if want("keyspace") {
            let keys = self.count_keys().await?;
            out += "# Keyspace\r\n";
            if keys > 0 {
                out += &format!("db0:keys={keys},expires=0,avg_ttl=0\r\n");
            }
            out += "\r\n";
        }
        Ok(Reply::Verbatim(VerbatimFormat::Text, out.into_bytes()))
    }
}

/// The Redis version the port reports (`INFO`, `HELLO`): the command set and reply shapes it
/// follows, which is what client libraries check before they use a feature.
pub const REDIS_VERSION: &str = "7.2.0";

/// When a conditional `SET` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cond {
    Always,
    IfAbsent,
    IfPresent,
}

fn no_ttls() -> Reply {
    err(
        "chordkv has no TTLs yet: SET with EX, PX, EXAT, PXAT or KEEPTTL is refused (the key \
         was not written)",
    )
}

fn too_large(size: usize, max: usize) -> Reply {
    err(format!(
        "string exceeds maximum allowed size ({size} bytes; this node's --max-value-bytes is \
         {max})"
    ))
}

fn unexpected(what: &str, got: &Response) -> Error {
    Error::InvalidData(format!("the node answered {what} with {}", got.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_indices_follow_redis() {
        // "Hello World" as in Redis's GETRANGE docs.
        let cases = [
            ((0, 3), Some((0, 3))),
            ((-3, -1), Some((8, 10))),
            ((0, -1), Some((0, 10))),
            ((10, 100), Some((10, 10))),
            ((5, 3), None),
            ((11, 20), None),
            ((-100, 2), Some((0, 2))),
        ];
        for ((s, e), want) in cases {
            assert_eq!(range(11, s, e), want, "GETRANGE {s} {e}");
        }
        assert_eq!(range(0, 0, -1), None);
    }

    #[test]
    fn floats_print_as_redis_stores_them() {
        assert_eq!(format_float(10.6), "10.6");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(-0.5), "-0.5");
        assert_eq!(format_float(5.0e3), "5000");
        assert!(!format_float(1e20).contains('e'));
    }
}
