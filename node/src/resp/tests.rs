//! The RESP port over real loopback sockets, on a node running in this process: atomic
//! read-modify-write under concurrent connections, access by token, and bad input that costs
//! only its own command or connection.

use crate::auth::{Gate, Tokens};
use crate::id::Id;
use crate::node::Options;
use crate::server::{Config, serve};
use crate::storage::MemoryStorage;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(20);
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A lone node (N = 1) with a RESP port; returns that port and what stops the node.
async fn node(tokens: Option<Tokens>, max_value: usize) -> (SocketAddr, oneshot::Sender<()>) {
    node_with(tokens, max_value, false).await
}

/// [`node`], with `FLUSHALL` allowed or not.
async fn node_with(
    tokens: Option<Tokens>,
    max_value: usize,
    flushall: bool,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let resp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let resp_addr = resp.local_addr().expect("addr");
    drop(resp);
    let mut config = Config::new(addr, PathBuf::from("(in memory)"));
    config.node = Options {
        kv: crate::kv::Options::with_replicas(1),
        ..Options::default()
    };
    config.limits.max_value = max_value;
    config.security.gate = Gate {
        cluster: None,
        tokens: tokens.map(Arc::new),
    };
    let mut resp = super::Config::new(resp_addr);
    resp.allow_flushall = flushall;
    config.resp = Some(resp);
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    tokio::spawn(serve(
        config,
        listener,
        MemoryStorage::new(),
        Id::hash(b"r"),
        shutdown,
    ));
    // Poll until the port answers.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Ok(mut c) = Conn::open(resp_addr).await {
            // PONG, or NOAUTH from a node with tokens: either way it serves.
            let r = c.call(&["PING"]).await;
            if r == "+PONG" || r.starts_with("-NOAUTH") {
                return (resp_addr, stop);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the RESP port never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw RESP2 connection: commands as multibulk, replies read one line at a time, bulk
/// strings returned as their text.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Ok(Conn {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn call(&mut self, args: &[&str]) -> String {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            frame.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
        }
        self.send_raw(&frame).await;
        self.reply().await
    }

    /// One reply: a simple string, error or integer as its line; a bulk string as its text
    /// (`(nil)` for a null); an array's elements joined by commas.
    async fn reply(&mut self) -> String {
        let line = self.line().await;
        match line.as_bytes().first() {
            Some(b'$') if line == "$-1" => "(nil)".into(),
            Some(b'$') => {
                let n: usize = line[1..].parse().expect("bulk length");
                while self.buf.len() < n + 2 {
                    self.fill().await;
                }
                let text = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                self.buf.drain(..n + 2);
                text
            }
            Some(b'*') => {
                let n: usize = line[1..].parse().expect("array length");
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(Box::pin(self.reply()).await);
                }
                items.join(",")
            }
            _ => line,
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(T, self.stream.read(&mut chunk))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(n > 0, "the node closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Whether the node closed the connection (after any bytes still to come).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(T, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_many_connections_each_see_a_distinct_value() {
    let (addr, _stop) = node(None, 4 << 20).await;
    const CONNS: usize = 8;
    const EACH: usize = 60;
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await.expect("connect");
            let mut seen = Vec::new();
            for _ in 0..EACH {
                let r = c.call(&["INCR", "counter"]).await;
                seen.push(
                    r.strip_prefix(':')
                        .and_then(|n| n.parse::<i64>().ok())
                        .unwrap_or_else(|| panic!("INCR answered {r}")),
                );
            }
            seen
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for n in t.await.expect("task") {
            assert!(
                all.insert(n),
                "two INCRs both answered {n}: an update was lost"
            );
        }
    }
    let total = (CONNS * EACH) as i64;
    assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
    let mut c = Conn::open(addr).await.expect("connect");
    assert_eq!(c.call(&["GET", "counter"]).await, total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setnx_races_have_exactly_one_winner() {
    let (addr, _stop) = node(None, 4 << 20).await;
    for round in 0..5 {
        let key = format!("lock{round}");
        let mut tasks = Vec::new();
        for i in 0..6 {
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Conn::open(addr).await.expect("connect");
                c.call(&["SETNX", &key, &format!("owner{i}")]).await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.expect("task").as_str() {
                ":1" => wins += 1,
                ":0" => {}
                other => panic!("SETNX answered {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_for_a_token_and_a_read_only_token_cannot_write() {
    let tokens: Tokens = format!("read-write app:{SECRET}\nread-only dash:{SECRET}x\n")
        .parse()
        .expect("tokens");
    let (addr, _stop) = node(Some(tokens), 4 << 20).await;
    let mut c = Conn::open(addr).await.expect("connect");
    assert!(c.call(&["GET", "k"]).await.starts_with("-NOAUTH"));
    assert!(c.call(&["SET", "k", "v"]).await.starts_with("-NOAUTH"));
    assert!(
        c.call(&["AUTH", "app", "wrong"])
            .await
            .starts_with("-WRONGPASS")
    );
    assert!(
        c.call(&["AUTH", "nobody", SECRET])
            .await
            .starts_with("-WRONGPASS")
    );
    assert!(c.call(&["GET", "k"]).await.starts_with("-NOAUTH"));
    assert_eq!(c.call(&["AUTH", "app", SECRET]).await, "+OK");
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK");

    let mut ro = Conn::open(addr).await.expect("connect");
    assert_eq!(ro.call(&["AUTH", &format!("dash:{SECRET}x")]).await, "+OK");
    assert_eq!(ro.call(&["GET", "k"]).await, "v");
    assert!(ro.call(&["SET", "k", "w"]).await.starts_with("-NOPERM"));
    assert!(ro.call(&["INCR", "n"]).await.starts_with("-NOPERM"));
    assert!(ro.call(&["DEL", "k"]).await.starts_with("-NOPERM"));
    assert_eq!(ro.call(&["GET", "k"]).await, "v", "nothing was written");
    // HELLO can authenticate and pick RESP3 at once.
    let mut h = Conn::open(addr).await.expect("connect");
    let hello = h.call(&["HELLO", "3", "AUTH", "app", SECRET]).await;
    assert!(hello.starts_with("%7"), "{hello}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_costs_only_its_command_or_its_connection() {
    let (addr, _stop) = node(None, 1024).await;
    let mut c = Conn::open(addr).await.expect("connect");
    // An oversized value is skipped as it streams in: an error, and the connection serves on.
    let big = "x".repeat(5000);
    let r = c.call(&["SET", "k", &big]).await;
    assert!(r.starts_with("-ERR value too large"), "{r}");
    assert_eq!(c.call(&["GET", "k"]).await, "(nil)");
    assert_eq!(c.call(&["PING"]).await, "+PONG");
    // Wrong arity and unknown commands: errors on a live connection.
    assert!(
        c.call(&["GET"])
            .await
            .starts_with("-ERR wrong number of arguments")
    );
    assert!(c.call(&["NOPE"]).await.starts_with("-ERR unknown command"));
    assert!(
        c.call(&["SET", "k", "v", "EX", "10"])
            .await
            .contains("no TTLs")
    );
    assert_eq!(c.call(&["GET", "k"]).await, "(nil)", "SET EX wrote nothing");
    // Inline commands, as telnet sends them, quotes included.
    c.send_raw(b"SET greeting \"hello world\"\r\nGET greeting\r\n")
        .await;
    assert_eq!(c.reply().await, "+OK");
    assert_eq!(c.reply().await, "hello world");
    // A broken frame closes its own connection with a protocol error...
    let mut bad = Conn::open(addr).await.expect("connect");
    bad.send_raw(b"*2\r\n$3\r\nGET\r\n:12\r\n").await;
    let r = bad.line().await;
    assert!(r.starts_with("-ERR Protocol error"), "{r}");
    assert!(bad.closed().await);
    // ...and the others serve on.
    assert_eq!(c.call(&["GET", "greeting"]).await, "hello world");
    let mut fresh = Conn::open(addr).await.expect("connect");
    assert_eq!(fresh.call(&["PING"]).await, "+PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siblings_are_a_conflict_until_a_write_with_their_context_resolves_them() {
    let (addr, _stop) = node(None, 4 << 20).await;
    let mut c = Conn::open(addr).await.expect("connect");
    assert_eq!(c.call(&["SET", "k", "a"]).await, "+OK");
    // A blind write (empty context) from another session is concurrent with what is there.
    // (In this session it would replace the session's own write: monotonic writes.)
    let mut other = Conn::open(addr).await.expect("connect");
    assert_eq!(other.call(&["CKV.PUT", "k", "b", ""]).await, "+OK");
    let r = c.call(&["GET", "k"]).await;
    assert!(r.starts_with("-CONFLICT k has 2 concurrent values"), "{r}");
    assert!(c.call(&["INCR", "k"]).await.starts_with("-CONFLICT"));
    let siblings = c.call(&["CKV.SIBLINGS", "k"]).await;
    let (token, values) = siblings.split_once(',').expect("token and values");
    let values: BTreeSet<&str> = values.split(',').collect();
    assert_eq!(values, BTreeSet::from(["a", "b"]));
    assert_eq!(c.call(&["CKV.PUT", "k", "c", token]).await, "+OK");
    assert_eq!(c.call(&["GET", "k"]).await, "c");
    // A SET overwrites whatever the owner holds, siblings included.
    let mut third = Conn::open(addr).await.expect("connect");
    assert_eq!(third.call(&["CKV.PUT", "k", "d", ""]).await, "+OK");
    assert!(c.call(&["GET", "k"]).await.starts_with("-CONFLICT"));
    assert_eq!(c.call(&["SET", "k", "e"]).await, "+OK");
    assert_eq!(c.call(&["GET", "k"]).await, "e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_is_off_unless_enabled_and_then_deletes_every_key_page_by_page() {
    let (addr, _stop) = node(None, 4 << 20).await;
    let mut c = Conn::open(addr).await.expect("connect");
    assert_eq!(c.call(&["SET", "k", "v"]).await, "+OK");
    let r = c.call(&["FLUSHALL"]).await;
    assert!(r.contains("--resp-flushall"), "{r}");
    assert_eq!(c.call(&["GET", "k"]).await, "v");

    let (addr, _stop) = node_with(None, 4 << 20, true).await;
    let mut c = Conn::open(addr).await.expect("connect");
    // More keys than one page of the listing (512), so paging is exercised.
    let mut mset = vec!["MSET".to_string()];
    for i in 0..1300 {
        mset.extend([format!("key{i}"), format!("v{i}")]);
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(c.call(&args).await, "+OK");
    assert_eq!(c.call(&["DEL", "key7"]).await, ":1");
    assert_eq!(c.call(&["DBSIZE"]).await, ":1299", "live keys, paged");
    assert_eq!(c.call(&["FLUSHALL"]).await, "+OK");
    assert_eq!(c.call(&["EXISTS", "key0", "key999", "key1299"]).await, ":0");
    assert_eq!(c.call(&["GET", "key500"]).await, "(nil)");
    assert_eq!(c.call(&["DBSIZE"]).await, ":0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_connection_keeps_a_bounded_session_and_replies() {
    let (addr, _stop) = node(None, 4 << 20).await;
    let mut c = Conn::open(addr).await.expect("connect");
    let mut mset = vec!["MSET".to_string()];
    for i in 0..3000 {
        mset.extend([format!("key{i}"), "v".to_string()]);
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(c.call(&args).await, "+OK");
    for i in 0..300 {
        assert_eq!(c.call(&["SET", &format!("seq{i}"), "v"]).await, "+OK");
    }
    let info = c.call(&["CLIENT", "INFO"]).await;
    let keys: usize = info
        .split_whitespace()
        .find_map(|f| f.strip_prefix("session-keys="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no session-keys in {info}"));
    assert!(
        keys <= super::command::SESSION_KEYS,
        "{keys} keys in {info}"
    );
    // A multi-key read whose values pass the reply bound is refused, not buffered.
    let big = "x".repeat(3 << 20);
    assert_eq!(c.call(&["SET", "big", &big]).await, "+OK");
    let mut mget = vec!["MGET"];
    mget.extend(std::iter::repeat_n("big", 8));
    let r = c.call(&mget).await;
    assert!(
        r.starts_with("-ERR reply too large"),
        "{}",
        &r[..r.len().min(80)]
    );
    assert_eq!(c.call(&["PING"]).await, "+PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_auth_a_connection_may_send_only_small_commands() {
    let tokens: Tokens = format!("read-write app:{SECRET}\n")
        .parse()
        .expect("tokens");
    let (addr, _stop) = node(Some(tokens), 4 << 20).await;
    let mut c = Conn::open(addr).await.expect("connect");
    let big = "x".repeat(64 << 10);
    let r = c.call(&["SET", "k", &big]).await;
    assert!(r.starts_with("-ERR value too large"), "{r}");
    assert_eq!(c.call(&["AUTH", "app", SECRET]).await, "+OK");
    assert_eq!(
        c.call(&["SET", "k", &big]).await,
        "+OK",
        "after AUTH the node's bounds apply"
    );
    assert_eq!(c.call(&["STRLEN", "k"]).await, ":65536");
}
