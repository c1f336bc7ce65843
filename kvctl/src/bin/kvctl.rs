//! kvctl: read, write and inspect a chordkv ring from the command line.
//!
//! Any node of the ring accepts every request and coordinates it, so `--node` can name any of
//! them. Output is plain text for people, or one JSON object per command with `--json`.
//!
//! Exit status: 0 on success, 1 if the key was not found (`get`, `delete`), 2 for usage errors
//! and for anything that went wrong talking to the ring, 3 if `ring` found it inconsistent, 4 if
//! the session's guarantees could not be met (no reachable copy holds what the session saw).
//! Errors are one line on stderr, starting with "kvctl: ", saying what failed and what to try.
//!
//! `get`, `put` and `delete` run in a session kept in a file (`--session FILE`, `KVCTL_SESSION`,
//! default `$XDG_STATE_HOME/chordkv/session`, else `~/.local/state/chordkv/session`), so one
//! command never sees the store older than what earlier commands read and wrote, through
//! whichever nodes (see `kvctl::session_file` for how processes share the file). Without
//! `XDG_STATE_HOME` and `HOME`, and no `--session`, they run without one and say so on stderr.
//! `--no-session` runs without one: plain eventual consistency.
//!
//! A key can hold several concurrent values (siblings), when writes raced or were made without
//! the context of a read. `get` prints them all, one per line, and on stderr the context TOKEN
//! that `put --context TOKEN` takes to replace exactly them with one value. Without `--context`,
//! `put` and `delete` read the key first and replace what that read returned.

use anyhow::{Context, anyhow};
use chordkv_node::auth::Token;
use chordkv_node::tls::ClientTls;
use chordkv_node::wire::{Credential, Dialer};
use clap::{Parser, Subcommand};
use kvctl::context_token::parse_context;
use kvctl::session_file::{Saved, SessionFile};
use kvctl::{
    Client, Error, LookupInfo, NodeRef, ReadReply, RingMember, RingView, Session, VersionVector,
};
use serde_json::{Value, json};
use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "kvctl",
    version,
    about = "Read, write and inspect a chordkv ring"
)]
struct Cli {
    /// Node to talk to, HOST:PORT; any node of the ring will do.
    #[arg(
        long,
        global = true,
        env = "KVCTL_NODE",
        default_value = "127.0.0.1:7000",
        value_name = "ADDR"
    )]
    node: String,

    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the connection and for each request (fractions allowed). Longer
    /// than a node's own deadline for a request (`--request-timeout-ms`, 10 s by default), so
    /// that a request the node gives up on is answered with the node's reason.
    #[arg(long, global = true, default_value = "12", value_name = "SECS", value_parser = parse_timeout)]
    timeout: Duration,

    /// Copies a read merges before answering (R, 1..=N; default: the node's).
    #[arg(long, global = true, value_name = "R")]
    r: Option<u8>,

    /// Copies a write waits for before it is acknowledged (W, 1..=N; default: the node's).
    #[arg(long, global = true, value_name = "W")]
    w: Option<u8>,

    /// Run get, put and delete in the session kept in FILE, created if missing [default:
    /// $XDG_STATE_HOME/chordkv/session, else ~/.local/state/chordkv/session].
    #[arg(long, global = true, env = "KVCTL_SESSION", value_name = "FILE")]
    session: Option<PathBuf>,

    /// Run without a session (plain eventual consistency); overrides --session and
    /// KVCTL_SESSION.
    #[arg(long, global = true)]
    no_session: bool,

    /// Send get, put and delete straight to the key's owner: walk the ring first (a status
    /// request per node), then send the request to the owner, falling back to --node if the
    /// owner refuses or cannot be reached. Same guarantees, one hop less.
    #[arg(long, global = true)]
    direct: bool,

    /// File holding this client's token (`NAME:SECRET`), for a node that authenticates clients;
    /// or put the token itself in KVCTL_TOKEN.
    #[arg(long, global = true, env = "KVCTL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// Speak TLS, trusting the CA certificate(s) in this PEM file to have signed the nodes'.
    #[arg(long, global = true, env = "KVCTL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store VALUE under KEY, replacing the values a read of KEY returns (or, with --context,
    /// exactly the values that context covers).
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it, as raw bytes, from standard input.
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Replace exactly the versions this context covers: the TOKEN `get` printed with the
        /// values it showed (use it to resolve siblings). Versions it does not cover stay.
        #[arg(long, value_name = "TOKEN")]
        context: Option<String>,
    },
    /// Print the value stored under KEY, as raw bytes (exit 1 if there is none). If KEY has
    /// several concurrent values (siblings), print each followed by a newline, and on stderr the
    /// context TOKEN to resolve them with `put --context`.
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY (exit 1 if there was none): the values a read of KEY returns or, with
    /// --context, exactly the values that context covers.
    Delete {
        /// The key.
        key: String,
        /// Delete exactly the versions this context covers: the TOKEN `get` printed.
        #[arg(long, value_name = "TOKEN")]
        context: Option<String>,
    },
    /// Show KEY's ring id, the node that owns it, and how many hops finding it took.
    Lookup {
        /// The key.
        key: String,
    },
    /// Walk the ring from --node: one row per node in ring order, then any inconsistencies
    /// (exit 3 if there are any).
    Ring,
    /// Load-test the ring: CLIENTS concurrent clients send gets, puts or a mix over KEYS keys
    /// for a duration or a number of requests, then print throughput, latency percentiles
    /// (HDR histogram), errors by kind and, with --direct, the share of requests that went
    /// straight to their owner. Runs without a session unless --sessions.
    Bench(BenchArgs),
    /// Show, reset or locate the session file that get, put and delete run in.
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// What to send: gets, puts (each replacing the key's last version), or a mix.
    #[arg(long, value_enum, default_value = "mix")]
    op: BenchOp,
    /// Concurrent clients, each with its own stream of requests.
    #[arg(long, default_value = "64")]
    clients: usize,
    /// Keys in the key space: PREFIX00000000 and up.
    #[arg(long, default_value = "10000")]
    keys: u64,
    /// Bytes per value written.
    #[arg(long, default_value = "16", value_name = "B")]
    value_size: usize,
    /// Measure for this many seconds [default: 10, unless --requests].
    #[arg(long, value_name = "SECS", conflicts_with = "requests", value_parser = parse_timeout)]
    duration: Option<Duration>,
    /// Measure this many requests in all.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// The share of gets in --op mix, 0 to 1.
    #[arg(long, default_value = "0.9", value_name = "SHARE")]
    mix_ratio: f64,
    /// First write every key (blind, so on keys the ring does not hold yet) so gets find them.
    #[arg(long)]
    load: bool,
    /// With --load, start loading at this key: what an earlier run with as many keys loaded.
    #[arg(long, default_value = "0", value_name = "N")]
    load_from: u64,
    /// Run this many seconds of requests, unmeasured, before measuring.
    #[arg(long, default_value = "0", value_name = "SECS")]
    warmup: f64,
    /// Keys are PREFIX and an 8-digit number.
    #[arg(long, default_value = "bench-")]
    key_prefix: String,
    /// Send every request through a node (spread over the ring's nodes), which coordinates it:
    /// the default unless --direct.
    #[arg(long, conflicts_with = "direct")]
    via_node: bool,
    /// Run each client in a session of its own.
    #[arg(long)]
    sessions: bool,
    /// Puts write fresh keys (one blind write each, PREFIXins-…) instead of replacing keys
    /// of the key space (a read first for a key whose last version this run did not write).
    #[arg(long)]
    insert: bool,
    /// Seeds the clients' choices of keys.
    #[arg(long, default_value = "1")]
    seed: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum BenchOp {
    Get,
    Put,
    Mix,
}

#[derive(Subcommand, Debug)]
enum SessionAction {
    /// How many keys the session holds, how many are not yet known to be on every copy, and
    /// its size (--json: every key's floor).
    Show,
    /// Delete the session file: the next get, put or delete starts a new session.
    Reset,
    /// Drop one key from the session: its reads no longer wait for what the session saw or
    /// inherited of it (for a key whose floor can never be met again, e.g. one recreated or
    /// collected since).
    Forget {
        /// The key.
        key: String,
    },
    /// Print the session file's path.
    Path,
}

/// A failure with an exit status of its own (others exit 2).
#[derive(Debug)]
struct Failed {
    code: u8,
    message: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// Exit status when the session's guarantees could not be met.
const EXIT_SESSION_UNMET: u8 = 4;

/// How a command that ran to the end came out.
enum Outcome {
    Done,
    NotFound(String),
    /// `ring` found problems (already printed): exit 3, so scripts can wait for convergence.
    Inconsistent,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs <= 0.0 {
        return Err("the timeout must be positive".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A bench drives many clients: give it the machine's cores.
    let runtime = match &cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kvctl: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound(key)) => {
            eprintln!("kvctl: key not found: {key}");
            ExitCode::from(1)
        }
        Ok(Outcome::Inconsistent) => ExitCode::from(3),
        Err(e) => {
            eprintln!("kvctl: {e:#}");
            ExitCode::from(e.downcast_ref::<Failed>().map_or(2, |f| f.code))
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    if let Command::Session { action } = &cli.command {
        return session_command(cli, action);
    }
    if let Command::Bench(args) = &cli.command {
        return bench(cli, args).await;
    }
    // A bad token is a usage error: refuse it before touching the network.
    let context = match &cli.command {
        Command::Put { context, .. } | Command::Delete { context, .. } => {
            context.as_deref().map(parse_context).transpose()?
        }
        _ => None,
    };
    // And so is a session file that cannot be used.
    let file = match &cli.command {
        Command::Put { .. } | Command::Get { .. } | Command::Delete { .. } => session_file(cli),
        _ => None,
    };
    let session = file
        .as_ref()
        .map(SessionFile::open)
        .transpose()
        .map_err(session_file_error)?;
    let in_session = session.is_some();
    let mut client = Client::connect_with(&cli.node, dialer(cli)?, cli.timeout)
        .await
        .map_err(|e| connect_error(&cli.node, e))?
        .with_quorums(cli.r, cli.w);
    let data = matches!(
        cli.command,
        Command::Put { .. } | Command::Get { .. } | Command::Delete { .. }
    );
    if cli.direct && data {
        client = client.routed(kvctl::RouteOptions::default()).await;
    }
    if let Some(session) = session {
        client = client.with_session(session);
    }
    let outcome = command(cli, &client, context, in_session).await;
    // Saved whatever the outcome: what the session observed before a failure is still true.
    if let (Some(file), Some(session)) = (&file, client.session()) {
        if let Err(e) = save_session(file, &session) {
            match outcome {
                Ok(_) => {
                    return Err(e.context("the command was done, but its session was not saved"));
                }
                Err(_) => eprintln!("kvctl: {e:#}"),
            }
        }
    }
    outcome
}

/// The session file get, put and delete run in, if any (see the module doc).
fn session_file(cli: &Cli) -> Option<SessionFile> {
    if cli.no_session {
        return None;
    }
    let path = cli.session.clone().or_else(SessionFile::default_path);
    if path.is_none() {
        eprintln!(
            "kvctl: running without a session: neither XDG_STATE_HOME nor HOME is set \
             (pass --session FILE to keep one, or --no-session to silence this)"
        );
    }
    path.map(SessionFile::new)
}

/// Joins what this command's session learnt into the file.
fn save_session(file: &SessionFile, session: &Session) -> anyhow::Result<()> {
    match file.save(session).map_err(session_file_error)? {
        Saved::Merged => {}
        Saved::Reset => eprintln!(
            "kvctl: the session file {} was reset while this command ran; this command's \
             session was not saved",
            file.path().display()
        ),
    }
    Ok(())
}

/// Explains a session file that cannot be used.
fn session_file_error(e: Error) -> anyhow::Error {
    anyhow!(match e {
        Error::InvalidData(m) => format!(
            "{m} (`kvctl session reset` deletes it and starts a new session; --no-session runs \
             without one)"
        ),
        Error::Io(m) => format!("{m} (pass --session FILE to keep the session elsewhere)"),
        e => e.to_string(),
    })
}

/// `kvctl session show|reset|path|forget KEY`.
fn session_command(cli: &Cli, action: &SessionAction) -> anyhow::Result<Outcome> {
    if cli.no_session {
        anyhow::bail!("`kvctl session` works on the session file; drop --no-session");
    }
    let path = cli
        .session
        .clone()
        .or_else(SessionFile::default_path)
        .ok_or_else(|| {
            anyhow!("no session file: neither XDG_STATE_HOME nor HOME is set (pass --session FILE)")
        })?;
    let file = SessionFile::new(path);
    let shown = file.path().display().to_string();
    match action {
        SessionAction::Path => {
            if cli.json {
                print_json(&json!({ "path": shown }))?;
            } else {
                print_line(&shown)?;
            }
        }
        SessionAction::Reset => {
            let removed = file.reset().map_err(session_file_error)?;
            if cli.json {
                print_json(&json!({ "path": shown, "removed": removed }))?;
            } else if removed {
                print_line(&format!("removed {shown}"))?;
            } else {
                print_line(&format!("no session at {shown}"))?;
            }
        }
        SessionAction::Forget { key } => {
            let forgotten = file.forget(key.as_bytes()).map_err(session_file_error)?;
            if cli.json {
                print_json(&json!({ "path": shown, "key": key, "forgotten": forgotten }))?;
            } else if forgotten {
                print_line(&format!("forgot {key}"))?;
            } else {
                print_line(&format!("the session holds nothing of {key}"))?;
            }
        }
        SessionAction::Show => {
            let read = file.read().map_err(session_file_error)?;
            if cli.json {
                print_json(&session_json(&shown, read.as_ref()))?;
            } else {
                print_line(&session_text(&shown, read.as_ref()))?;
            }
        }
    }
    Ok(Outcome::Done)
}

/// Runs get, put, delete, lookup or ring.
async fn command(
    cli: &Cli,
    client: &Client,
    context: Option<VersionVector>,
    in_session: bool,
) -> anyhow::Result<Outcome> {
    match &cli.command {
        Command::Put { key, value, .. } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("cannot read VALUE from standard input")?;
                buf
            } else {
                value.as_bytes().to_vec()
            };
            // Client::put, spelled out to report what the write did.
            let context = match context {
                Some(context) => context,
                None => {
                    client
                        .read(key.as_bytes())
                        .await
                        .map_err(|e| data_error("put", key, in_session, e))?
                        .context
                }
            };
            let written = client
                .write(key.as_bytes(), &value, &context)
                .await
                .map_err(|e| data_error("put", key, in_session, e))?;
            if cli.json {
                print_json(&json!({
                    "key": key,
                    "ok": true,
                    "bytes": value.len(),
                    "dot": written.dot.to_string(),
                    "existed": written.existed,
                    "session": in_session,
                }))?;
            } else {
                print_line("ok")?;
            }
            Ok(Outcome::Done)
        }
        Command::Get { key } => {
            let read = client
                .read(key.as_bytes())
                .await
                .map_err(|e| data_error("get", key, in_session, e))?;
            if cli.json {
                let mut out = read_json(key, &read);
                out["session"] = in_session.into();
                print_json(&out)?;
            } else {
                match read.values.as_slice() {
                    [] => {}
                    [value] => {
                        let mut out = value.clone();
                        if std::io::stdout().is_terminal() {
                            out.push(b'\n');
                        }
                        write_stdout(&out)?;
                    }
                    values => {
                        let mut out = Vec::new();
                        for value in values {
                            out.extend_from_slice(value);
                            out.push(b'\n');
                        }
                        write_stdout(&out)?;
                        eprintln!("kvctl: {}", siblings_hint(key, &read));
                    }
                }
            }
            Ok(if read.values.is_empty() {
                Outcome::NotFound(key.clone())
            } else {
                Outcome::Done
            })
        }
        Command::Delete { key, .. } => {
            let existed = match context {
                Some(context) => {
                    client
                        .remove(key.as_bytes(), &context)
                        .await
                        .map_err(|e| data_error("delete", key, in_session, e))?
                        .existed
                }
                None => client
                    .delete(key.as_bytes())
                    .await
                    .map_err(|e| data_error("delete", key, in_session, e))?,
            };
            if cli.json {
                print_json(&json!({ "key": key, "deleted": existed, "session": in_session }))?;
            } else if existed {
                print_line("deleted")?;
            }
            Ok(if existed {
                Outcome::Done
            } else {
                Outcome::NotFound(key.clone())
            })
        }
        Command::Lookup { key } => {
            let info = client
                .lookup(key.as_bytes())
                .await
                .map_err(|e| request_error("lookup", e))?;
            if cli.json {
                print_json(&lookup_json(key, &info))?;
            } else {
                print_line(&lookup_text(key, &info))?;
            }
            Ok(Outcome::Done)
        }
        Command::Ring => {
            let view = client
                .ring_view()
                .await
                .map_err(|e| request_error("ring", e))?;
            if cli.json {
                print_json(&ring_json(&view))?;
            } else {
                print_line(&ring_text(&view))?;
            }
            Ok(if view.is_consistent() {
                Outcome::Done
            } else {
                Outcome::Inconsistent
            })
        }
        Command::Session { .. } | Command::Bench(_) => {
            unreachable!("run() handles `kvctl session` and `kvctl bench` itself")
        }
    }
}

/// The stderr line for a key with several values: how many, and the command that replaces them.
fn siblings_hint(key: &str, read: &ReadReply) -> String {
    format!(
        "{key} has {} concurrent values (siblings); resolve with: kvctl put --context {} {} VALUE",
        read.values.len(),
        kvctl::Context::from(read.context.clone()).to_token(),
        shell_word(key),
    )
}

/// `word` as one shell word: unchanged if it is plain, single-quoted otherwise.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How to reach the nodes: the token of --token-file or KVCTL_TOKEN, TLS if --tls-ca.
fn dialer(cli: &Cli) -> anyhow::Result<Dialer> {
    let mut dialer = Client::open_dialer();
    let token = match (&cli.token_file, std::env::var("KVCTL_TOKEN")) {
        (Some(path), _) => Some(Token::from_file(path)?),
        (None, Ok(text)) => Some(text.parse().map_err(|e| anyhow!("KVCTL_TOKEN: {e}"))?),
        (None, Err(_)) => None,
    };
    if let Some(token) = token {
        dialer.credential = Credential::Token(token);
    }
    if let Some(ca) = &cli.tls_ca {
        dialer.tls = Some(ClientTls::from_ca_file(ca)?);
    }
    Ok(dialer)
}

// ---- errors: one line, what failed and what to try ----

/// Explains a failure to connect to `node`.
fn connect_error(node: &str, e: Error) -> anyhow::Error {
    let hint = "set --node or KVCTL_NODE";
    anyhow!(match e {
        e @ Error::Unreachable(_) => format!("{e} (is chordkv-node running? {hint})"),
        Error::Unavailable(m) => format!("{m} (is chordkv-node running? {hint})"),
        Error::Timeout(m) => format!("{m} (is {node} the right address? raise --timeout)"),
        Error::InvalidInput(m) => format!("{m} ({hint})"),
        Error::InvalidData(m) => format!("{m} (is {node} a chordkv node? {hint})"),
        e @ Error::VersionMismatch { .. } => {
            format!("{node}: {e} (use kvctl and chordkv-node from the same release)")
        }
        e @ Error::Unauthorized(_) => format!(
            "{e} (pass the node's token with --token-file or KVCTL_TOKEN; for TLS, --tls-ca)"
        ),
        e => format!("cannot connect to {node}: {e}"),
    })
}

/// Explains a failed get, put or delete of `key`; in a session, a request whose guarantees no
/// reachable copy could meet exits 4.
fn data_error(op: &str, key: &str, in_session: bool, e: Error) -> anyhow::Error {
    match e {
        Error::SessionUnmet {
            op: what,
            guarantee,
            detail,
        } => Failed {
            code: EXIT_SESSION_UNMET,
            message: format!(
                "cannot {what} {key} without going back in time ({guarantee}): {detail}; retry, \
                 or use --no-session"
            ),
        }
        .into(),
        e @ Error::SessionFull(_) => anyhow!(
            "{op} failed: {e}; start a new session with --session FILE or `kvctl session reset`"
        ),
        Error::Timeout(_) if in_session => anyhow!(
            "{op} failed: {e} (retry, or raise --timeout: in a session a node may wait up to its \
             --request-timeout-ms for a copy that holds what the session saw)"
        ),
        e => request_error(op, e),
    }
}

/// Explains a failed request.
fn request_error(op: &str, e: Error) -> anyhow::Error {
    anyhow!(match e {
        Error::Unavailable(_) | Error::Unreachable(_) | Error::Overloaded(_) => {
            format!("{op} failed: {e} (the ring may be changing; retry)")
        }
        Error::Timeout(_) => format!("{op} failed: {e} (retry, or raise --timeout)"),
        Error::InvalidData(_) => {
            format!("{op} failed: {e} (are kvctl and chordkv-node from the same release?)")
        }
        Error::Conflict(_) => format!(
            "{op} failed: {e} (`kvctl get KEY` prints every value and the TOKEN for \
             `kvctl put --context TOKEN KEY VALUE`)"
        ),
        e => format!("{op} failed: {e}"),
    })
}

// ---- output ----

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

fn print_line(text: &str) -> anyhow::Result<()> {
    write_stdout(format!("{text}\n").as_bytes())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    print_line(&value.to_string())
}

fn node_json(node: &NodeRef) -> Value {
    json!({ "id": node.id.to_string(), "addr": node.addr.to_string() })
}

/// A value as text when it is UTF-8 (else null), and always as hex.
fn value_json(bytes: &[u8]) -> Value {
    json!({
        "value": std::str::from_utf8(bytes).ok(),
        "value_hex": hex::encode(bytes),
    })
}

/// A read: every value, how many, and the context TOKEN. With exactly one value, `value` and
/// `value_hex` are also at the top level, for callers that expect one.
fn read_json(key: &str, read: &ReadReply) -> Value {
    let mut out = json!({
        "key": key,
        "found": !read.values.is_empty(),
        "values": read.values.iter().map(|v| value_json(v)).collect::<Vec<_>>(),
        "siblings": read.values.len(),
        "context": kvctl::Context::from(read.context.clone()).to_token(),
    });
    if let ([value], Some(fields)) = (read.values.as_slice(), out.as_object_mut()) {
        if let Value::Object(single) = value_json(value) {
            fields.extend(single);
        }
    }
    out
}

/// A key as text when it is UTF-8 (else null), and always as hex.
fn key_json(key: &[u8]) -> Value {
    json!({ "key": std::str::from_utf8(key).ok(), "key_hex": hex::encode(key) })
}

/// `kvctl session show --json`: the file, and if there is one, the session's size and every
/// key's floor as sizes (entries of the vectors, dots written).
fn session_json(path: &str, read: Option<&(Session, usize)>) -> Value {
    let Some((session, bytes)) = read else {
        return json!({ "path": path, "exists": false, "keys": 0, "unstable": 0, "bytes": 0 });
    };
    let floors: Vec<Value> = session
        .iter()
        .map(|(key, floor, stable)| {
            let mut v = key_json(key);
            v["stable"] = stable.into();
            v["read"] = floor.read.len().into();
            v["wrote"] = floor.wrote.len().into();
            v["deps"] = floor.deps.len().into();
            v
        })
        .collect();
    json!({
        "path": path,
        "exists": true,
        "id": session.id().to_string(),
        "keys": session.len(),
        "unstable": session.unstable(),
        "bytes": bytes,
        "floors": floors,
    })
}

fn session_text(path: &str, read: Option<&(Session, usize)>) -> String {
    match read {
        None => format!("no session at {path}: the next get, put or delete starts one"),
        Some((session, bytes)) => format!(
            "file      {path}\nsession   {}\nkeys      {} ({} not yet known on every copy)\n\
             bytes     {bytes}",
            session.id(),
            session.len(),
            session.unstable(),
        ),
    }
}

fn lookup_json(key: &str, info: &LookupInfo) -> Value {
    json!({
        "key": key,
        "key_id": info.key_id.to_string(),
        "owner": node_json(&info.owner),
        "hops": info.hops,
        "timeouts": info.timeouts,
    })
}

fn lookup_text(key: &str, info: &LookupInfo) -> String {
    format!(
        "key       {key}\nkey id    {}\nowner     {} at {}\nhops      {} ({} timed out)",
        info.key_id, info.owner.id, info.owner.addr, info.hops, info.timeouts
    )
}

fn ring_json(view: &RingView) -> Value {
    let nodes: Vec<Value> = view
        .nodes
        .iter()
        .map(|member| match member {
            RingMember::Up(s) => json!({
                "id": s.node.id.to_string(),
                "addr": s.node.addr.to_string(),
                "reachable": true,
                "joined": s.joined,
                "pred": s.pred.map(|p| p.id.to_string()),
                "succs": s.succs.iter().map(|n| n.id.to_string()).collect::<Vec<_>>(),
                "keys": s.keys,
                "owned": s.owned,
                "replicas": s.replicas,
                "replicas_wanted": s.replicas_wanted,
            }),
            RingMember::Unreachable { node, error } => json!({
                "id": node.id.to_string(),
                "addr": node.addr.to_string(),
                "reachable": false,
                "error": error,
            }),
        })
        .collect();
    json!({
        "consistent": view.is_consistent(),
        "closed": view.end == kvctl::WalkEnd::Closed,
        "nodes": nodes,
        "inconsistencies": view.inconsistencies,
    })
}

fn ring_text(view: &RingView) -> String {
    let header = [
        "NODE",
        "ADDRESS",
        "PRED",
        "SUCCESSORS",
        "OWNED/STORED",
        "COPIES",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for member in &view.nodes {
        let node = member.node();
        rows.push(match member {
            RingMember::Up(s) => [
                node.id.short(),
                node.addr.to_string(),
                s.pred.map_or_else(|| "-".into(), |p| p.id.short()),
                s.succs
                    .iter()
                    .map(|n| n.id.short())
                    .collect::<Vec<_>>()
                    .join(","),
                format!("{}/{}", s.owned, s.keys),
                format!("{}/{}", s.replicas, s.replicas_wanted),
            ],
            RingMember::Unreachable { .. } => [
                node.id.short(),
                node.addr.to_string(),
                "-".into(),
                "-".into(),
                "unreachable".into(),
                "-".into(),
            ],
        });
    }
    let widths: Vec<usize> = (0..6)
        .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push('\n');
    let short = view
        .nodes
        .iter()
        .filter_map(RingMember::status)
        .filter(|s| s.replicas < s.replicas_wanted)
        .map(|s| (s.replicas, s.replicas_wanted))
        .min();
    if let Some((have, want)) = short {
        out.push_str(&format!(
            "warning: keys have only {have} of {want} copies: the ring has fewer nodes than \
             --replicas\n"
        ));
    }
    if view.is_consistent() {
        let n = view.nodes.len();
        let nodes = if n == 1 { "node" } else { "nodes" };
        out.push_str(&format!("ring is consistent: {n} {nodes}"));
    } else {
        out.push_str(&format!(
            "ring is inconsistent ({} problems):",
            view.inconsistencies.len()
        ));
        for problem in &view.inconsistencies {
            out.push_str(&format!("\n  - {problem}"));
        }
    }
    out
}

/// `kvctl bench`.
async fn bench(cli: &Cli, args: &BenchArgs) -> anyhow::Result<Outcome> {
    if !(0.0..=1.0).contains(&args.mix_ratio) {
        anyhow::bail!("--mix-ratio must be between 0 and 1");
    }
    let warmup = Duration::try_from_secs_f64(args.warmup)
        .map_err(|e| anyhow!("--warmup {}: {e}", args.warmup))?;
    let length = match (args.duration, args.requests) {
        (_, Some(n)) => kvctl::bench::Length::Requests(n),
        (Some(d), None) => kvctl::bench::Length::Duration(d),
        (None, None) => kvctl::bench::Length::Duration(Duration::from_secs(10)),
    };
    let config = kvctl::bench::Config {
        node: cli.node.clone(),
        dialer: dialer(cli)?,
        timeout: cli.timeout,
        op: match args.op {
            BenchOp::Get => kvctl::bench::Op::Get,
            BenchOp::Put => kvctl::bench::Op::Put,
            BenchOp::Mix => kvctl::bench::Op::Mix,
        },
        mix_ratio: args.mix_ratio,
        clients: args.clients,
        keys: args.keys,
        value_size: args.value_size,
        length,
        load: args.load,
        load_from: args.load_from,
        warmup,
        key_prefix: args.key_prefix.clone(),
        direct: cli.direct && !args.via_node,
        sessions: args.sessions,
        insert: args.insert,
        seed: args.seed,
        progress: !cli.json && std::io::stderr().is_terminal(),
    };
    let report = kvctl::bench::run(config)
        .await
        .map_err(|e| connect_error(&cli.node, e))?;
    if cli.json {
        print_json(&report)?;
    } else {
        print_bench(&report)?;
    }
    Ok(Outcome::Done)
}

/// The bench report for people.
fn print_bench(r: &Value) -> anyhow::Result<()> {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut out = vec![format!(
        "{} clients, {} keys, {}-byte values, {}: {} requests in {:.1} s, {:.0}/s",
        r["clients"],
        r["keys"],
        r["value_size"],
        r["routing"].as_str().unwrap_or(""),
        r["requests"],
        f(&r["secs"]),
        f(&r["throughput"])
    )];
    if r["load"].is_object() {
        out.push(format!(
            "load: {} keys in {:.1} s ({:.0}/s, {} errors)",
            r["load"]["keys"],
            f(&r["load"]["secs"]),
            f(&r["load"]["per_s"]),
            r["load"]["errors"]
        ));
    }
    for op in ["get", "put"] {
        let s = &r[op];
        if s["count"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let l = &s["latency_ms"];
        out.push(format!(
            "{op}: {} ok ({:.0}/s), latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            s["ok"],
            f(&s["per_s"]),
            f(&l["p50"]),
            f(&l["p90"]),
            f(&l["p99"]),
            f(&l["p99_9"]),
            f(&l["max"])
        ));
        if op == "get" && s["missing"].as_u64().unwrap_or(0) > 0 {
            out.push(format!("get: {} found no value (use --load)", s["missing"]));
        }
    }
    let errors = r["errors"].as_object().cloned().unwrap_or_default();
    if errors.is_empty() {
        out.push("errors: none".into());
    } else {
        let list: Vec<String> = errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push(format!("errors: {}", list.join(", ")));
    }
    if let Some(share) = r["direct_share"].as_f64() {
        out.push(format!(
            "direct: {:.2}% of requests went straight to their owner",
            share * 100.0
        ));
    }
    print_line(&out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_parse_as_positive_seconds() {
        assert_eq!(parse_timeout("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        for bad in ["0", "-1", "soon", "NaN", "inf"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn put_accepts_values_that_look_like_flags() {
        let cli = Cli::try_parse_from(["kvctl", "put", "k", "-5"]).expect("parses");
        assert!(matches!(cli.command, Command::Put { value, .. } if value == "-5"));
    }

    fn read(values: &[&[u8]]) -> ReadReply {
        ReadReply {
            values: values.iter().map(|v| v.to_vec()).collect(),
            context: VersionVector::new(),
            deps: Default::default(),
            stable: false,
        }
    }

    #[test]
    fn values_show_as_text_when_utf8_and_always_as_hex() {
        let v = read_json("k", &read(&[b"hi"]));
        assert_eq!(v["found"], true);
        assert_eq!(v["siblings"], 1);
        assert_eq!(v["value"], "hi");
        assert_eq!(v["value_hex"], "6869");
        assert_eq!(v["values"], json!([{ "value": "hi", "value_hex": "6869" }]));
        let v = read_json("k", &read(&[&[0xff]]));
        assert_eq!(v["value"], Value::Null);
        assert_eq!(v["value_hex"], "ff");
    }

    #[test]
    fn siblings_show_as_a_list_without_a_single_value() {
        let v = read_json("k", &read(&[b"a", &[0xff]]));
        assert_eq!(v["found"], true);
        assert_eq!(v["siblings"], 2);
        assert_eq!(v["values"][1], json!({ "value": null, "value_hex": "ff" }));
        assert!(v.get("value").is_none(), "{v}");
        assert_eq!(v["context"], kvctl::Context::empty().to_token());

        let v = read_json("k", &read(&[]));
        assert_eq!(v["found"], false);
        assert_eq!(v["values"], json!([]));
    }

    #[test]
    fn the_resolve_hint_quotes_keys_for_the_shell() {
        assert_eq!(shell_word("user:42/a.b"), "user:42/a.b");
        assert_eq!(shell_word("two words"), "'two words'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        let hint = siblings_hint("k", &read(&[b"a", b"b"]));
        assert_eq!(
            hint,
            "k has 2 concurrent values (siblings); resolve with: kvctl put --context 00 k VALUE"
        );
    }

    #[test]
    fn put_and_delete_take_a_context_anywhere() {
        for args in [
            ["kvctl", "put", "--context", "00", "k", "v"],
            ["kvctl", "put", "k", "v", "--context", "00"],
            ["kvctl", "put", "k", "-5", "--context", "00"],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert!(
                matches!(&cli.command, Command::Put { context: Some(c), .. } if c == "00"),
                "{args:?}"
            );
        }
        let cli = Cli::try_parse_from(["kvctl", "delete", "k", "--context", "00"]).expect("parses");
        assert!(matches!(&cli.command, Command::Delete { context: Some(c), .. } if c == "00"));
    }
}
