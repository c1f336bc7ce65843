//! The Redis protocol port (`chordkv-node --resp ADDR`) driven by real Redis clients: the real
//! `redis-cli` (one command per run, a batch on stdin, `--pipe`, `-3` for RESP3), the real Python
//! `redis` package (`tests/redis/client.py`, a python3 child that exits non-zero naming the first
//! check that failed), and raw TCP connections for what no client sends (malformed frames,
//! inline commands as typed into `nc`, exact RESP3 types).
//!
//! Every answer is compared exactly. Where chordkv means to behave as Redis, the very same checks
//! run against a real `redis-server` ([`redis_server_passes_the_same_checks`]), so they state
//! Redis's behaviour and not the gateway's; the checks of chordkv's own contract (CKV.*,
//! CONFLICT, no TTLs, ring-wide DBSIZE and FLUSHALL, `# Ring` in INFO) are shown there to fail
//! against Redis, so they can fail.
//!
//! Covered: every command of the gateway's contract in RESP2 and RESP3; a pipeline of 1,000
//! commands; framing errors that close only their connection; oversized values refused with the
//! connection serving on; a 3-node ring where each node reads what the others wrote; siblings
//! made by a blind `CKV.PUT` and resolved with the context of `CKV.SIBLINGS`; read-your-writes on
//! one connection while the copy that answers lags; AUTH with the node's tokens.
//!
//! Needs `redis-cli`, `redis-server` and python3 with `redis` on PATH (`.ci/run` installs them;
//! `apt-get install redis-tools redis-server` and `pip install redis` by hand).

// Each test binary uses a part of the shared harness.
#[allow(dead_code)]
mod common;

use chordkv_node::auth::Token;
use chordkv_node::wire::Credential;
use common::{CLIENT_TIMEOUT, CONVERGE, Cluster, LAGGING_COPY_FLAGS, free_addr, wait_until};
use kvctl::Client;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The Python client script, run with the `python3` on PATH.
const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis/client.py");

/// One node alone: it keeps one copy, so it takes writes.
const ALONE: [&str; 2] = ["--replicas", "1"];

/// The tokens of [`tokens_decide_who_may_read_and_write`], as `AUTH NAME SECRET`.
const WRITER: (&str, &str) = ("app", "0123456789abcdef0123456789abcdef");
const READER: (&str, &str) = ("dash", "fedcba9876543210fedcba9876543210");

// ---- A raw RESP connection ----

/// One reply, as it came on the wire: RESP2 and RESP3 types kept apart, so that a test can tell
/// a RESP2 nil bulk (`$-1`) from a RESP3 null (`_`).
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    /// `+text`
    Simple(String),
    /// `-text`, or a RESP3 blob error `!`.
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` with its bytes.
    Bulk(Vec<u8>),
    /// `$-1`
    Nil,
    /// `*-1`
    NilArray,
    /// `*n` with its elements.
    Array(Vec<Reply>),
    /// RESP3 `_`
    Null,
    /// RESP3 `%n` with its pairs.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~n`
    Set(Vec<Reply>),
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `,` (double), `(` (big number), as sent.
    Number(String),
    /// RESP3 `=n` verbatim string: its format and its text.
    Verbatim(String, Vec<u8>),
    /// RESP3 `>n` push.
    Push(Vec<Reply>),
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(text: &str) -> Reply {
    Reply::Bulk(text.as_bytes().to_vec())
}

impl Reply {
    /// The value of `key` in a RESP3 map, or in a RESP2 array of keys and values.
    fn field(&self, key: &str) -> Option<&Reply> {
        let key = bulk(key);
        match self {
            Reply::Map(pairs) => pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            Reply::Array(items) => items
                .chunks(2)
                .find(|kv| kv[0] == key)
                .and_then(|kv| kv.get(1)),
            _ => None,
        }
    }
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what)
}

/// Reads one CRLF-terminated line, without the CRLF.
fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "a line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn read_bytes(r: &mut impl BufRead, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf)?;
    if !buf.ends_with(b"\r\n") {
        return Err(invalid(format!("{n} bytes not followed by CRLF")));
    }
    buf.truncate(n);
    Ok(buf)
}

fn read_items(r: &mut impl BufRead, n: i64) -> std::io::Result<Vec<Reply>> {
    (0..n).map(|_| read_reply(r)).collect()
}

/// Reads one RESP2 or RESP3 reply (RESP3 attributes are skipped).
fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let line = read_line(r)?;
    let Some((&kind, rest)) = line.split_first() else {
        return Err(invalid("an empty line where a reply starts".into()));
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let number = || -> std::io::Result<i64> {
        text.parse()
            .map_err(|_| invalid(format!("not a number: {text:?}")))
    };
    Ok(match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(number()?),
        b'$' => match number()? {
            n if n < 0 => Reply::Nil,
            n => Reply::Bulk(read_bytes(r, n as usize)?),
        },
        b'*' => match number()? {
            n if n < 0 => Reply::NilArray,
            n => Reply::Array(read_items(r, n)?),
        },
        b'_' => Reply::Null,
        b'#' => Reply::Bool(rest == b"t"),
        b',' | b'(' => Reply::Number(text),
        b'!' => {
            let n = number()?;
            Reply::Error(String::from_utf8_lossy(&read_bytes(r, n as usize)?).into_owned())
        }
        b'=' => {
            let body = read_bytes(r, number()? as usize)?;
            let (format, text) = body.split_at(body.len().min(4));
            Reply::Verbatim(
                String::from_utf8_lossy(format).trim_end_matches(':').into(),
                text.to_vec(),
            )
        }
        b'%' => {
            let items = read_items(r, 2 * number()?)?;
            let mut pairs = Vec::new();
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            Reply::Map(pairs)
        }
        b'~' => Reply::Set(read_items(r, number()?)?),
        b'>' => Reply::Push(read_items(r, number()?)?),
        b'|' => {
            read_items(r, 2 * number()?)?;
            read_reply(r)?
        }
        _ => {
            return Err(invalid(format!(
                "a reply of unknown type: {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
    })
}

/// A raw TCP connection to a Redis port: sends bytes or commands, reads replies.
struct Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to the Redis port {addr}: {e}"));
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("a read timeout can be set");
        Conn {
            addr,
            stream: BufReader::new(stream),
        }
    }

    /// Writes `bytes` as they are.
    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to {}: {e}", self.addr));
    }

    /// The next reply; panics if none comes.
    fn reply(&mut self) -> Reply {
        read_reply(&mut self.stream).unwrap_or_else(|e| panic!("no reply from {}: {e}", self.addr))
    }

    /// Sends one command as an array of bulk strings and returns its reply.
    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(&encode(args));
        self.reply()
    }

    /// [`Conn::call`] with text arguments.
    fn cmd(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&args)
    }

    /// `Ok` if the server closed the connection (end of stream or a reset) with nothing more
    /// to read, `Err` with what came instead.
    fn closed(&mut self) -> Result<(), String> {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => Ok(()),
            Ok(_) => Err(format!(
                "the connection sent {:?} before closing",
                String::from_utf8_lossy(&rest)
            )),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(format!("the connection was not closed: {e}")),
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ---- Real clients and a real redis-server ----

/// Runs `redis-cli -p PORT ARGS` with `stdin`, stderr captured.
fn redis_cli_with_input(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli runs (apt-get install redis-tools)");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("redis-cli runs to the end");
    writer.join().expect("the stdin writer does not panic");
    out
}

/// What `redis-cli --no-raw ARGS` prints for one command (the formatted output a terminal
/// shows: `(integer) 1`, `"v"`, `(nil)`, `(error) ...`). Panics if it fails to run.
fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let mut all = vec!["--no-raw"];
    all.extend_from_slice(args);
    let out = redis_cli_with_input(addr, &all, b"");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `client.py SCENARIO --port ... ARGS` and asserts it passed, printing what it said.
#[track_caller]
fn python(scenario: &str, ports: &[SocketAddr], args: &[&str]) {
    let out = run_python(scenario, ports, args);
    assert!(
        out.status.success(),
        "client.py {scenario} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_python(scenario: &str, ports: &[SocketAddr], args: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(CLIENT_PY).arg(scenario);
    for p in ports {
        cmd.args(["--port", &p.port().to_string()]);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs (with `pip install redis`)")
}

/// A real `redis-server` on a free loopback port, without persistence, in a temporary
/// directory; killed when dropped.
struct RedisServer {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for attempt in 0.. {
            let addr = free_addr();
            let mut child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (apt-get install redis-server)");
            let started = wait_until(CONVERGE, "redis-server to answer", || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Ok(Err(status));
                }
                match TcpStream::connect(addr) {
                    Ok(_) => Ok(Ok(())),
                    Err(e) => Err(e.to_string()),
                }
            });
            match started {
                Ok(()) => {
                    return RedisServer {
                        addr,
                        child,
                        _dir: dir,
                    };
                }
                // Its port was taken in the meantime.
                Err(_) if attempt < 5 => continue,
                Err(status) => panic!("redis-server exited: {status}"),
            }
        }
        unreachable!("the loop above returns or panics")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Checks that hold for chordkv and for Redis alike ----

/// `redis-cli` commands and what they print, in order, on an empty store.
const CLI_CASES: &[(&[&str], &str)] = &[
    (&["PING"], "PONG\n"),
    (&["PING", "hi there"], "\"hi there\"\n"),
    (&["ECHO", "hello world"], "\"hello world\"\n"),
    (&["SELECT", "0"], "OK\n"),
    (&["DBSIZE"], "(integer) 0\n"),
    (&["SET", "cli-k", "v"], "OK\n"),
    (&["GET", "cli-k"], "\"v\"\n"),
    (&["GET", "cli-missing"], "(nil)\n"),
    (&["SET", "cli-k", "w", "GET"], "\"v\"\n"),
    (&["SET", "cli-k", "x", "NX"], "(nil)\n"),
    (&["SET", "cli-k", "x", "XX"], "OK\n"),
    (&["SET", "cli-new", "x", "XX"], "(nil)\n"),
    (&["SETNX", "cli-k", "y"], "(integer) 0\n"),
    (&["SETNX", "cli-n", "5"], "(integer) 1\n"),
    (&["GETSET", "cli-k", "z"], "\"x\"\n"),
    (&["MSET", "cli-a", "1", "cli-b", "2"], "OK\n"),
    (
        &["MGET", "cli-a", "cli-missing", "cli-b"],
        "1) \"1\"\n2) (nil)\n3) \"2\"\n",
    ),
    (
        &["EXISTS", "cli-a", "cli-b", "cli-missing"],
        "(integer) 2\n",
    ),
    (&["INCR", "cli-a"], "(integer) 2\n"),
    (&["INCRBY", "cli-a", "40"], "(integer) 42\n"),
    (&["DECR", "cli-a"], "(integer) 41\n"),
    (&["DECRBY", "cli-a", "51"], "(integer) -10\n"),
    (&["INCRBYFLOAT", "cli-a", "0.25"], "\"-9.75\"\n"),
    (&["APPEND", "cli-b", "345"], "(integer) 4\n"),
    (&["STRLEN", "cli-b"], "(integer) 4\n"),
    (&["GETRANGE", "cli-b", "1", "2"], "\"34\"\n"),
    (&["SETRANGE", "cli-b", "1", "xy"], "(integer) 4\n"),
    (&["GET", "cli-b"], "\"2xy5\"\n"),
    (&["TYPE", "cli-b"], "string\n"),
    (&["TYPE", "cli-missing"], "none\n"),
    (&["DBSIZE"], "(integer) 4\n"),
    (&["GETDEL", "cli-b"], "\"2xy5\"\n"),
    (&["DEL", "cli-a", "cli-b"], "(integer) 1\n"),
    (&["UNLINK", "cli-k", "cli-missing"], "(integer) 1\n"),
    (&["DBSIZE"], "(integer) 1\n"),
    (
        &["GET"],
        "(error) ERR wrong number of arguments for 'get' command\n",
    ),
    (
        &["INCR", "cli-n", "1"],
        "(error) ERR wrong number of arguments for 'incr' command\n",
    ),
    (
        &["INCRBY", "cli-n", "x"],
        "(error) ERR value is not an integer or out of range\n",
    ),
    (
        &["SET", "cli-k", "v", "NX", "XX"],
        "(error) ERR syntax error\n",
    ),
    (&["QUIT"], "OK\n"),
];

/// Runs [`CLI_CASES`] against the Redis port `addr` (on an empty store) and describes each
/// command that printed something else.
fn cli_case_failures(addr: SocketAddr) -> Vec<String> {
    let mut wrong = Vec::new();
    for (args, want) in CLI_CASES {
        let got = cli(addr, args);
        if got != *want {
            wrong.push(format!(
                "redis-cli {args:?}: printed {got:?}, want {want:?}"
            ));
        }
    }
    let unknown = cli(addr, &["NOSUCHCMD", "a"]);
    if !unknown.starts_with("(error) ERR unknown command") {
        wrong.push(format!("redis-cli NOSUCHCMD a: printed {unknown:?}"));
    }
    wrong
}

/// [`cli_case_failures`], none allowed.
fn check_cli_cases(addr: SocketAddr) {
    let wrong = cli_case_failures(addr);
    assert!(
        wrong.is_empty(),
        "{} redis-cli commands against {addr} printed something else:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Commands on redis-cli's stdin run on one connection, in order, each answered.
fn check_cli_stdin(addr: SocketAddr) {
    let input = b"CLIENT SETNAME batch\nCLIENT GETNAME\nSET in-a \"b c\"\nGET in-a\nGET\n\
                  APPEND in-a \" d\"\nGET in-a\nDEL in-a\nPING\n";
    let out = redis_cli_with_input(addr, &["--no-raw"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "OK\n\"batch\"\nOK\n\"b c\"\n\
         (error) ERR wrong number of arguments for 'get' command\n\
         (integer) 5\n\"b c d\"\n(integer) 1\nPONG\n"
    );
}

/// 1,000 SETs in RESP through `redis-cli --pipe`, every one acknowledged, then read back.
fn check_cli_pipe(addr: SocketAddr) {
    let mut input = Vec::new();
    for i in 0..1000 {
        let (key, value) = (format!("pipe-{i}"), format!("value {i}"));
        input.extend(encode(&[b"SET", key.as_bytes(), value.as_bytes()]));
    }
    let out = redis_cli_with_input(addr, &["--pipe"], &input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "redis-cli --pipe failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.ends_with("errors: 0, replies: 1000\n"),
        "redis-cli --pipe printed {stdout:?}"
    );
    let mut conn = Conn::open(addr);
    for i in [0, 1, 500, 998, 999] {
        let key = format!("pipe-{i}");
        assert_eq!(
            conn.cmd(&["GET", &key]),
            bulk(&format!("value {i}")),
            "{key}"
        );
    }
}

/// Framing errors get `-ERR Protocol error: ...`, and the connection is closed; commands
/// before them in the same write are answered, and other connections serve on.
fn check_malformed_frames(addr: SocketAddr) {
    let mut bystander = Conn::open(addr);
    assert_eq!(bystander.cmd(&["SET", "bystander", "here"]), ok());
    let cases: &[(&str, &[u8])] = &[
        ("a bulk length that is not a number", b"*1\r\n$abc\r\n"),
        ("an array length that is not a number", b"*x\r\n"),
        ("no $ before an argument", b"*1\r\nfoo\r\n"),
        ("a 100 GB bulk string", b"*1\r\n$99999999999\r\n"),
        ("a 100 G element array", b"*99999999999\r\n"),
        ("an inline command with unbalanced quotes", b"SET a \"b\r\n"),
    ];
    for (what, bytes) in cases {
        let mut conn = Conn::open(addr);
        // A well-formed command first, in the same write: it is answered.
        let mut input = encode(&[b"PING"]);
        input.extend_from_slice(bytes);
        conn.send(&input);
        assert_eq!(conn.reply(), Reply::Simple("PONG".into()), "{what}");
        match conn.reply() {
            Reply::Error(e) if e.starts_with("ERR Protocol error: ") => {}
            other => panic!("{what}: got {other:?}, want -ERR Protocol error: ..."),
        }
        if let Err(e) = conn.closed() {
            panic!("{what}: after the protocol error: {e}");
        }
        assert_eq!(bystander.cmd(&["GET", "bystander"]), bulk("here"), "{what}");
        assert_eq!(
            Conn::open(addr).cmd(&["PING"]),
            Reply::Simple("PONG".into())
        );
    }
}

/// Inline commands, as `nc` sends what is typed: CRLF or a bare LF, quotes, empty lines.
fn check_inline(addr: SocketAddr) {
    let mut conn = Conn::open(addr);
    conn.send(b"PING\r\n");
    assert_eq!(conn.reply(), Reply::Simple("PONG".into()));
    conn.send(b"SET inline \"b c\"\r\n");
    assert_eq!(conn.reply(), ok());
    conn.send(b"GET inline\r\n");
    assert_eq!(conn.reply(), bulk("b c"));
    conn.send(b"PING\n");
    assert_eq!(conn.reply(), Reply::Simple("PONG".into()));
    conn.send(b"SET inline 'single quoted'\n");
    assert_eq!(conn.reply(), ok());
    conn.send(b"STRLEN inline\n");
    assert_eq!(conn.reply(), Reply::Int(13));
    // Empty lines are no commands: the next reply is ECHO's.
    conn.send(b"\r\n\n   \r\nECHO done\r\n");
    assert_eq!(conn.reply(), bulk("done"));
    // Inline and RESP arrays mix on one connection.
    conn.send(b"DEL inline\r\n*2\r\n$3\r\nGET\r\n$6\r\ninline\r\n");
    assert_eq!(conn.reply(), Reply::Int(1));
    assert_eq!(conn.reply(), Reply::Nil);
}

/// HELLO switches a connection's protocol: RESP3 sends a map, a null for a missing key and
/// keeps simple strings and integers; HELLO 2 switches back.
fn check_resp3_raw(addr: SocketAddr) {
    let mut conn = Conn::open(addr);
    assert_eq!(conn.cmd(&["GET", "r3-missing"]), Reply::Nil);
    let hello = conn.cmd(&["HELLO", "3"]);
    assert!(matches!(hello, Reply::Map(_)), "HELLO 3 sent {hello:?}");
    assert_eq!(hello.field("proto"), Some(&Reply::Int(3)), "{hello:?}");
    assert!(
        matches!(hello.field("id"), Some(Reply::Int(_))),
        "{hello:?}"
    );
    assert_eq!(conn.cmd(&["GET", "r3-missing"]), Reply::Null);
    assert_eq!(
        conn.cmd(&["MGET", "r3-missing", "r3-missing"]),
        Reply::Array(vec![Reply::Null, Reply::Null])
    );
    assert_eq!(conn.cmd(&["SET", "r3", "v"]), ok());
    assert_eq!(conn.cmd(&["GET", "r3"]), bulk("v"));
    assert_eq!(conn.cmd(&["INCR", "r3-n"]), Reply::Int(1));
    assert_eq!(conn.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(
        conn.cmd(&["GET"]),
        Reply::Error("ERR wrong number of arguments for 'get' command".into())
    );
    let hello = conn.cmd(&["HELLO", "2"]);
    assert!(matches!(hello, Reply::Array(_)), "HELLO 2 sent {hello:?}");
    assert_eq!(hello.field("proto"), Some(&Reply::Int(2)), "{hello:?}");
    assert_eq!(conn.cmd(&["GET", "r3-missing"]), Reply::Nil);
    assert_eq!(conn.cmd(&["DEL", "r3", "r3-n"]), Reply::Int(2));
}

/// `redis-cli -3` speaks RESP3 and prints RESP3 types.
fn check_cli_resp3(addr: SocketAddr) {
    let hello = cli(addr, &["-3", "HELLO", "3"]);
    assert!(
        hello
            .lines()
            .any(|l| l.ends_with("# \"proto\" => (integer) 3")),
        "redis-cli -3 HELLO 3 printed {hello:?}"
    );
    assert_eq!(cli(addr, &["-3", "SET", "cli3", "v"]), "OK\n");
    assert_eq!(cli(addr, &["-3", "GET", "cli3"]), "\"v\"\n");
    assert_eq!(
        cli(addr, &["-3", "MGET", "cli3", "cli3-missing"]),
        "1) \"v\"\n2) (nil)\n"
    );
    assert_eq!(cli(addr, &["-3", "DEL", "cli3"]), "(integer) 1\n");
    let docs = cli(addr, &["-3", "COMMAND", "DOCS", "get"]);
    assert!(
        docs.starts_with("1# \"get\" => \n   1# \"summary\" => \""),
        "redis-cli -3 COMMAND DOCS get printed {docs:?}"
    );
}

// ---- Tests ----

#[test]
fn redis_py_gets_the_answers_of_redis_to_every_command_in_resp2_and_resp3() {
    let cluster = Cluster::start_with_resp(1, &[&ALONE[..], &["--resp-flushall"]].concat());
    let port = [cluster.resp_addr(0)];
    python("commands", &port, &["--chordkv", "--protocol", "2"]);
    python("commands", &port, &["--chordkv", "--protocol", "3"]);
}

#[test]
fn redis_cli_prints_what_it_prints_for_redis() {
    let cluster = Cluster::start_with_resp(1, &ALONE);
    let addr = cluster.resp_addr(0);
    // Every mismatch is collected, so that one run names all of them.
    let mut wrong = cli_case_failures(addr);
    let mut expect = |args: &[&str], ok: &dyn Fn(&str) -> bool, want: &str| {
        let got = cli(addr, args);
        if !ok(&got) {
            wrong.push(format!("redis-cli {args:?}: printed {got:?}, want {want}"));
        }
    };

    // chordkv's own: no TTLs, one database, FLUSHALL only when the node allows it.
    expect(&["SET", "ttl", "v"], &|o| o == "OK\n", "OK");
    for opt in [
        &["EX", "10"][..],
        &["PX", "10000"],
        &["EXAT", "4102444800"],
        &["PXAT", "4102444800000"],
        &["KEEPTTL"],
    ] {
        let mut args = vec!["SET", "ttl", "w"];
        args.extend_from_slice(opt);
        expect(
            &args,
            &|o| o.starts_with("(error) ERR ") && o.to_lowercase().contains("ttl"),
            "an -ERR saying chordkv has no TTLs",
        );
    }
    expect(&["GET", "ttl"], &|o| o == "\"v\"\n", "\"v\" (untouched)");
    expect(
        &["SELECT", "1"],
        &|o| o.starts_with("(error) ERR "),
        "an -ERR",
    );
    let before = cli(addr, &["DBSIZE"]);
    for flush in ["FLUSHALL", "FLUSHDB"] {
        expect(
            &[flush],
            &|o| o.starts_with("(error) ERR "),
            "an -ERR (the node runs without --resp-flushall)",
        );
    }
    expect(
        &["DBSIZE"],
        &|o| o == before,
        &format!("{before:?}, as before"),
    );
    expect(&["GET", "ttl"], &|o| o == "\"v\"\n", "\"v\" (untouched)");
    assert!(
        wrong.is_empty(),
        "{} redis-cli commands printed something else:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    check_cli_stdin(addr);
}

#[test]
fn redis_cli_3_and_raw_connections_get_resp3_types() {
    let cluster = Cluster::start_with_resp(1, &ALONE);
    let addr = cluster.resp_addr(0);
    check_cli_resp3(addr);
    check_resp3_raw(addr);

    // CKV.SIBLINGS in RESP3: [context, [values]], the same shape as in RESP2. The blind write
    // comes from another connection: one connection is one session, whose writes replace each
    // other.
    let mut conn = Conn::open(addr);
    assert!(matches!(conn.cmd(&["HELLO", "3"]), Reply::Map(_)));
    assert_eq!(conn.cmd(&["SET", "sib3", "a"]), ok());
    assert_eq!(Conn::open(addr).cmd(&["CKV.PUT", "sib3", "b", ""]), ok());
    match conn.cmd(&["GET", "sib3"]) {
        Reply::Error(e)
            if e.starts_with("CONFLICT ")
                && e.ends_with(" has 2 concurrent values; read them with CKV.SIBLINGS") => {}
        other => panic!("GET of a key with 2 siblings: got {other:?}, want -CONFLICT"),
    }
    let token = match conn.cmd(&["CKV.SIBLINGS", "sib3"]) {
        Reply::Array(items) => match &items[..] {
            [Reply::Bulk(token), Reply::Array(values)] => {
                let mut values = values.clone();
                values.sort_by_key(|v| format!("{v:?}"));
                assert_eq!(values, vec![bulk("a"), bulk("b")]);
                token.clone()
            }
            other => panic!("CKV.SIBLINGS: got {other:?}, want [context, [values]]"),
        },
        other => panic!("CKV.SIBLINGS: got {other:?}, want an array"),
    };
    assert_eq!(conn.call(&[b"CKV.PUT", b"sib3", b"c", &token]), ok());
    assert_eq!(conn.cmd(&["GET", "sib3"]), bulk("c"));
}

#[test]
fn pipelines_through_redis_cli_and_redis_py_answer_every_command_in_order() {
    let cluster = Cluster::start_with_resp(1, &ALONE);
    let addr = cluster.resp_addr(0);
    check_cli_pipe(addr);
    python("pipeline", &[addr], &["--protocol", "2"]);
    python("pipeline", &[addr], &["--protocol", "3"]);
}

#[test]
fn a_malformed_frame_gets_a_protocol_error_and_closes_only_its_connection() {
    let cluster = Cluster::start_with_resp(1, &ALONE);
    check_malformed_frames(cluster.resp_addr(0));
    // The node itself is unharmed: its own protocol answers too.
    cluster.status(0).expect("the node answers after bad input");
}

#[test]
fn inline_commands_typed_as_into_nc_are_answered() {
    let cluster = Cluster::start_with_resp(1, &ALONE);
    check_inline(cluster.resp_addr(0));
}

#[test]
fn an_oversized_value_gets_an_error_and_the_connection_serves_on() {
    let args = [&ALONE[..], &["--max-value-bytes", "1024"]].concat();
    let cluster = Cluster::start_with_resp(1, &args);
    let mut conn = Conn::open(cluster.resp_addr(0));
    let fits = "f".repeat(1024);
    let big = "b".repeat(2000);
    let is_err = |reply: Reply, what: &str| match reply {
        Reply::Error(e) if e.starts_with("ERR ") => {}
        other => panic!("{what}: got {other:?}, want -ERR"),
    };
    assert_eq!(conn.cmd(&["SET", "fits", &fits]), ok());
    assert_eq!(conn.cmd(&["GET", "fits"]), bulk(&fits));

    is_err(conn.cmd(&["SET", "big", &big]), "SET of 2000 bytes");
    assert_eq!(conn.cmd(&["PING"]), Reply::Simple("PONG".into()));
    assert_eq!(conn.cmd(&["GET", "big"]), Reply::Nil);
    // Pipelined: the refused SET and the commands after it, all in one write.
    let mut input = encode(&[b"SET", b"big", big.as_bytes()]);
    input.extend(encode(&[b"PING"]));
    input.extend(encode(&[b"EXISTS", b"big"]));
    conn.send(&input);
    is_err(conn.reply(), "pipelined SET of 2000 bytes");
    assert_eq!(conn.reply(), Reply::Simple("PONG".into()));
    assert_eq!(conn.reply(), Reply::Int(0));

    // Growing a value past the bound is refused the same way, and leaves it as it was.
    assert_eq!(conn.cmd(&["SET", "grow", "start"]), ok());
    is_err(conn.cmd(&["APPEND", "grow", &big]), "APPEND to 2005 bytes");
    is_err(
        conn.cmd(&["SETRANGE", "grow", "5000", "x"]),
        "SETRANGE to 5001 bytes",
    );
    is_err(conn.cmd(&["GETSET", "grow", &big]), "GETSET of 2000 bytes");
    assert_eq!(conn.cmd(&["GET", "grow"]), bulk("start"));
    assert_eq!(conn.cmd(&["PING"]), Reply::Simple("PONG".into()));
}

#[test]
fn three_nodes_read_through_each_node_what_was_written_through_the_others() {
    let cluster = Cluster::start_with_resp(3, &[]);
    let ports = cluster.resp_addrs();
    // FLUSHALL is refused on nodes without --resp-flushall, and removes nothing.
    assert_eq!(cli(ports[0], &["SET", "flush-probe", "1"]), "OK\n");
    let out = cli(ports[1], &["FLUSHALL"]);
    assert!(out.starts_with("(error) ERR "), "FLUSHALL printed {out:?}");
    assert_eq!(cli(ports[2], &["GET", "flush-probe"]), "\"1\"\n");

    // CKV.RING names every node, CKV.LOOKUP the owner kvctl names, INFO each node's neighbours.
    let statuses: Vec<_> = cluster
        .all()
        .iter()
        .map(|&i| cluster.status(i).expect("a node's status"))
        .collect();
    for &port in &ports {
        let ring = cli(port, &["CKV.RING"]);
        for s in &statuses {
            for want in [s.node.id.to_string(), s.node.addr.to_string()] {
                assert!(
                    ring.contains(&want),
                    "CKV.RING through {port} lacks {want}:\n{ring}"
                );
            }
        }
    }
    for key in ["ring:0:1", "ring:2:500", "x"] {
        let owner = &statuses[cluster.owner_of(0, key).expect("kvctl lookup")].node;
        for &port in &ports {
            let lookup = cli(port, &["CKV.LOOKUP", key]);
            for want in [owner.id.to_string(), owner.addr.to_string()] {
                assert!(
                    lookup.contains(&want),
                    "CKV.LOOKUP {key} through {port} lacks the owner's {want}:\n{lookup}"
                );
            }
        }
    }
    for (i, &port) in ports.iter().enumerate() {
        let info = cli(port, &["INFO"]);
        let ring = info
            .split("\r\n\r\n")
            .chain(info.split("\n\n"))
            .find(|section| section.trim_start().starts_with("# Ring"))
            .unwrap_or_else(|| panic!("INFO through node {i} has no # Ring section:\n{info}"));
        let s = &statuses[i];
        let pred = s
            .pred
            .as_ref()
            .expect("a node of a ring of 3 has a predecessor");
        assert!(
            ring.contains(&s.node.id.to_string()),
            "INFO # Ring of node {i} lacks its id {}:\n{ring}",
            s.node.id
        );
        // Neighbours by id or by address, either names them.
        for (what, n) in
            std::iter::once(("predecessor", pred)).chain(s.succs.iter().map(|n| ("successor", n)))
        {
            assert!(
                ring.contains(&n.id.to_string()) || ring.contains(&n.addr.to_string()),
                "INFO # Ring of node {i} lacks its {what} {n}:\n{ring}"
            );
        }
    }

    // 1,000 keys through each node, each read back through the two others; then 1,000 DELs;
    // DBSIZE through each node counts them.
    python("ring", &ports, &["--protocol", "2"]);
}

#[test]
fn siblings_from_a_blind_ckv_put_conflict_until_a_put_with_their_context() {
    let cluster = Cluster::start_with_resp(3, &[]);
    let ports = cluster.resp_addrs();
    python("siblings", &ports, &["--chordkv", "--protocol", "2"]);
    python("siblings", &ports, &["--chordkv", "--protocol", "3"]);
}

#[test]
fn a_connection_reads_its_own_write_when_the_copy_that_answers_lags() {
    // As in tests/sessions.rs: one copy per write and per read, anti-entropy off, and the key's
    // owner dropping what it sends to its first successor, which takes over when it dies.
    let mut cluster = Cluster::new();
    cluster.serve_resp();
    for i in 0..4 {
        cluster.start_node((i > 0).then_some(0), &LAGGING_COPY_FLAGS);
    }
    cluster.wait_for_ring(&cluster.all());
    cluster.wait_for_all_copies();
    let owner = cluster.owner_of(0, "x").expect("x has an owner");
    let succs = cluster.successors_of(owner);
    let (next, last) = (succs[0], succs[2]);
    cluster.block(owner, vec![cluster.addr(next)]);

    // One connection, through a node that stays up.
    let mut session = Conn::open(cluster.resp_addr(last));
    assert_eq!(session.cmd(&["SET", "x", "1"]), ok());
    assert_eq!(session.cmd(&["GET", "x"]), bulk("1"));

    cluster.kill_node(owner);
    let rest: Vec<usize> = cluster.all().into_iter().filter(|&i| i != owner).collect();
    wait_until(CONVERGE, "the ring to repair without x's owner", || {
        cluster.converged(&rest)?;
        for &i in &rest {
            match cluster.owner_of(i, "x")? {
                o if o == next => {}
                o => return Err(format!("node {i} says node {o} owns x")),
            }
        }
        Ok(())
    });

    // Another connection, to the same node, is another session: its read at R = 1 is answered
    // from the new owner's copy, which missed the write. This is the lag to see through.
    let mut fresh = Conn::open(cluster.resp_addr(last));
    assert_eq!(
        fresh.cmd(&["GET", "x"]),
        Reply::Nil,
        "the new owner's stale copy should answer a connection that never wrote x"
    );
    // The writing connection reads its write, and goes on from it.
    assert_eq!(session.cmd(&["GET", "x"]), bulk("1"));
    assert_eq!(session.cmd(&["INCR", "x"]), Reply::Int(2));
    assert_eq!(session.cmd(&["GET", "x"]), bulk("2"));
}

#[test]
fn tokens_decide_who_may_read_and_write() {
    let mut cluster = Cluster::new();
    let tokens = cluster.dir().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# test tokens\nread-write {}:{}\nread-only {}:{}\n",
            WRITER.0, WRITER.1, READER.0, READER.1
        ),
    )
    .expect("write the tokens file");
    let writer_token = format!("{}:{}", WRITER.0, WRITER.1);
    let token_file = cluster.dir().join("writer.token");
    std::fs::write(&token_file, &writer_token).expect("write the token file");
    let mut dialer = Client::open_dialer();
    dialer.credential = Credential::Token(writer_token.parse::<Token>().expect("a token"));
    let token_file = path(&token_file).to_string();
    cluster.set_client_credentials(dialer, &["--token-file", &token_file]);
    cluster.serve_resp();
    let args = [&ALONE[..], &["--tokens-file", path(&tokens)]].concat();
    cluster.start_node(None, &args);
    let port = [cluster.resp_addr(0)];
    python_auth(&port);
    // redis-cli with --user and --pass authenticates as the token's name and secret.
    let out = redis_cli_with_input(
        port[0],
        &[
            "--no-raw", "--user", READER.0, "--pass", READER.1, "GET", "auth-k",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"v2\"\n");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// The reference: the Redis-compatible checks above hold against a real redis-server, and the
/// chordkv-only ones fail there (so they can fail).
#[test]
fn redis_server_passes_the_same_checks() {
    let redis = RedisServer::start(&[]);
    let port = [redis.addr];
    for protocol in ["2", "3"] {
        python("commands", &port, &["--protocol", protocol]);
        python("pipeline", &port, &["--protocol", protocol]);
    }
    cli(redis.addr, &["FLUSHALL"]);
    check_cli_cases(redis.addr);
    check_cli_stdin(redis.addr);
    check_cli_pipe(redis.addr);
    check_cli_resp3(redis.addr);
    check_resp3_raw(redis.addr);
    check_malformed_frames(redis.addr);
    check_inline(redis.addr);
    cli(redis.addr, &["FLUSHALL"]);
    python("ring", &[redis.addr; 3], &["--keys", "300"]);

    // Negative controls: chordkv's own checks fail against Redis, with the script's message.
    for (scenario, args) in [
        ("commands", &["--chordkv"][..]),
        ("siblings", &["--chordkv"]),
    ] {
        let out = run_python(scenario, &port, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "client.py {scenario} --chordkv passed against Redis"
        );
        assert!(stderr.contains("FAILED"), "client.py {scenario}: {stderr}");
    }

    // AUTH against Redis's ACL users standing for the tokens.
    let writer = format!(">{}", WRITER.1);
    let reader = format!(">{}", READER.1);
    let acl = RedisServer::start(&[
        "--user",
        "default",
        "off",
        "--user",
        WRITER.0,
        "on",
        &writer,
        "~*",
        "&*",
        "+@all",
        "--user",
        READER.0,
        "on",
        &reader,
        "~*",
        "+@read",
        "+@connection",
    ]);
    python_auth(&[acl.addr]);
}

/// client.py's `auth` scenario against `ports`, in RESP2 and RESP3, with the writer's and the
/// reader's credentials.
fn python_auth(ports: &[SocketAddr]) {
    let creds = [
        "--user",
        WRITER.0,
        "--password",
        WRITER.1,
        "--ro-user",
        READER.0,
        "--ro-password",
        READER.1,
    ];
    for protocol in ["2", "3"] {
        let mut args = vec!["--protocol", protocol];
        args.extend_from_slice(&creds);
        python("auth", ports, &args);
    }
}
