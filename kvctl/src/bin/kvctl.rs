//! kvctl: read, write and inspect a chordkv ring from the command line.
//!
//! Any node of the ring accepts every request and coordinates it, so `--node` can name any of
//! them. Output is plain text for people, or one JSON object per command with `--json`.
//!
//! Exit status: 0 on success, 1 if the key was not found (`get`, `delete`), 2 for usage errors
//! and for anything that went wrong talking to the ring. Errors are one line on stderr, starting
//! with "kvctl: ", saying what failed and what to try.

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use kvctl::{Client, Error, LookupInfo, NodeRef, RingMember, RingView};
use serde_json::{Value, json};
use std::io::{IsTerminal, Read, Write};
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

    /// Seconds to wait for the connection and for each request (fractions allowed).
    #[arg(long, global = true, default_value = "5", value_name = "SECS", value_parser = parse_timeout)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store VALUE under KEY.
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it, as raw bytes, from standard input.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Print the value stored under KEY, as raw bytes (exit 1 if there is none).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY (exit 1 if there was none).
    Delete {
        /// The key.
        key: String,
    },
    /// Show KEY's ring id, the node that owns it, and how many hops finding it took.
    Lookup {
        /// The key.
        key: String,
    },
    /// Walk the ring from --node: one row per node in ring order, then any inconsistencies
    /// (exit 3 if there are any).
    Ring,
}

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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
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
            ExitCode::from(2)
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let client = Client::connect(&cli.node, cli.timeout)
        .await
        .map_err(|e| connect_error(&cli.node, e))?;
    match &cli.command {
        Command::Put { key, value } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("cannot read VALUE from standard input")?;
                buf
            } else {
                value.as_bytes().to_vec()
            };
            client
                .put(key.as_bytes(), &value)
                .await
                .map_err(|e| request_error("put", e))?;
            if cli.json {
                print_json(&json!({ "key": key, "ok": true, "bytes": value.len() }))?;
            } else {
                print_line("ok")?;
            }
            Ok(Outcome::Done)
        }
        Command::Get { key } => {
            let value = client
                .get(key.as_bytes())
                .await
                .map_err(|e| request_error("get", e))?;
            if cli.json {
                print_json(&value_json(key, value.as_deref()))?;
            } else if let Some(value) = &value {
                let mut out = value.clone();
                if std::io::stdout().is_terminal() {
                    out.push(b'\n');
                }
                write_stdout(&out)?;
            }
            Ok(match value {
                Some(_) => Outcome::Done,
                None => Outcome::NotFound(key.clone()),
            })
        }
        Command::Delete { key } => {
            let existed = client
                .delete(key.as_bytes())
                .await
                .map_err(|e| request_error("delete", e))?;
            if cli.json {
                print_json(&json!({ "key": key, "deleted": existed }))?;
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
    }
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
        e => format!("cannot connect to {node}: {e}"),
    })
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

fn value_json(key: &str, value: Option<&[u8]>) -> Value {
    match value {
        None => json!({ "key": key, "found": false }),
        Some(bytes) => json!({
            "key": key,
            "found": true,
            "value": std::str::from_utf8(bytes).ok(),
            "value_hex": hex::encode(bytes),
        }),
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
    let header = ["NODE", "ADDRESS", "PRED", "SUCCESSORS", "KEYS"].map(String::from);
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
                s.keys.to_string(),
            ],
            RingMember::Unreachable { .. } => [
                node.id.short(),
                node.addr.to_string(),
                "-".into(),
                "-".into(),
                "unreachable".into(),
            ],
        });
    }
    let widths: Vec<usize> = (0..5)
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

    #[test]
    fn values_show_as_text_when_utf8_and_always_as_hex() {
        let v = value_json("k", Some(b"hi"));
        assert_eq!(v["value"], "hi");
        assert_eq!(v["value_hex"], "6869");
        let v = value_json("k", Some(&[0xff]));
        assert_eq!(v["value"], Value::Null);
        assert_eq!(v["value_hex"], "ff");
    }
}
