//! The RESP port's command table: every command's name, arity (Redis's convention: `n`
//! exactly, `-n` at least), kind and key positions, and the commands that only describe the
//! table or the node's settings (`COMMAND`, `CONFIG GET`). [`super::command`] checks each
//! command against it before running it.

use super::command::{err, text};
use super::frame::Reply;

/// What a command does, for `COMMAND` and for the access check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Reads keys.
    Read,
    /// Writes keys: needs a read-write token.
    Write,
    /// Touches no key (connection, server, ring).
    Other,
}

/// One command's row of the table.
pub(super) struct Spec {
    pub(super) name: &'static str,
    /// Redis's arity: the argument count with the name, exactly (n) or at least (-n).
    pub(super) arity: i64,
    pub(super) kind: Kind,
    /// Key positions: first, last (-1: the last argument), step; 0, 0, 0 for none.
    pub(super) keys: (i64, i64, i64),
    /// One line for `COMMAND DOCS`.
    pub(super) summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    kind: Kind,
    keys: (i64, i64, i64),
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        kind,
        keys,
        summary,
    }
}

use Kind::{Other, Read, Write};

/// Every command the port takes.
#[rustfmt::skip]
static COMMANDS: &[Spec] = &[
    spec("get", 2, Read, (1, 1, 1), "Returns the value of a key."),
    spec("set", -3, Write, (1, 1, 1), "Sets the value of a key (NX, XX, GET; no TTLs)."),
    spec("setnx", 3, Write, (1, 1, 1), "Sets a key only if it does not exist."),
    spec("getset", 3, Write, (1, 1, 1), "Sets a key and returns its old value."),
    spec("getdel", 2, Write, (1, 1, 1), "Returns a key's value and deletes it."),
    spec("mget", -2, Read, (1, -1, 1), "Returns the values of keys."),
    spec("mset", -3, Write, (1, -1, 2), "Sets keys (not atomically across keys)."),
    spec("del", -2, Write, (1, -1, 1), "Deletes keys; returns how many existed."),
    spec("unlink", -2, Write, (1, -1, 1), "Deletes keys, as DEL."),
    spec("exists", -2, Read, (1, -1, 1), "Counts the given keys that exist."),
    spec("strlen", 2, Read, (1, 1, 1), "Returns the length of a key's value."),
    spec("append", 3, Write, (1, 1, 1), "Appends to a key's value."),
    spec("getrange", 4, Read, (1, 1, 1), "Returns a substring of a key's value."),
    spec("setrange", 4, Write, (1, 1, 1), "Overwrites part of a key's value."),
    spec("incr", 2, Write, (1, 1, 1), "Adds one to a key's integer."),
    spec("decr", 2, Write, (1, 1, 1), "Subtracts one from a key's integer."),
    spec("incrby", 3, Write, (1, 1, 1), "Adds to a key's integer."),
    spec("decrby", 3, Write, (1, 1, 1), "Subtracts from a key's integer."),
    spec("incrbyfloat", 3, Write, (1, 1, 1), "Adds to a key's floating-point number."),
    spec("type", 2, Read, (1, 1, 1), "Returns the type of a key: string or none."),
    spec("dbsize", 1, Read, (0, 0, 0), "Counts the keys of the whole ring."),
    spec("flushall", -1, Write, (0, 0, 0), "Deletes every key of the ring (if enabled)."),
    spec("flushdb", -1, Write, (0, 0, 0), "Deletes every key of the ring, as FLUSHALL."),
    spec("ping", -1, Other, (0, 0, 0), "Returns PONG, or the argument."),
    spec("echo", 2, Other, (0, 0, 0), "Returns the argument."),
    spec("hello", -1, Other, (0, 0, 0), "Picks RESP2 or RESP3, authenticates, names."),
    spec("auth", -2, Other, (0, 0, 0), "Authenticates with a client token."),
    spec("select", 2, Other, (0, 0, 0), "Selects database 0 (the only one)."),
    spec("quit", -1, Other, (0, 0, 0), "Closes the connection."),
    spec("client", -2, Other, (0, 0, 0), "SETNAME, GETNAME, ID, INFO, SETINFO."),
    spec("command", -1, Other, (0, 0, 0), "Describes the commands."),
    spec("info", -1, Other, (0, 0, 0), "Describes the node and the ring."),
    spec("config", -2, Other, (0, 0, 0), "CONFIG GET, for tools that ask."),
    spec("ckv.siblings", 2, Read, (1, 1, 1), "Returns a key's context and every value."),
    spec("ckv.put", 4, Write, (1, 1, 1), "Writes a value replacing what a context covers."),
    spec("ckv.lookup", 2, Other, (1, 1, 1), "Names a key's owner and the lookup's hops."),
    spec("ckv.ring", 1, Other, (0, 0, 0), "Lists the nodes of the ring in id order."),
    spec("ckv.session", -2, Other, (0, 0, 0), "GET, SET or RESET the connection's session."),
];

pub(super) fn find(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS [name…]`.
pub(super) fn command(a: &[Vec<u8>]) -> Reply {
    let info = |c: &Spec| {
        let (flags, categories) = match c.kind {
            Read => (vec!["readonly", "fast"], vec!["@read", "@string", "@fast"]),
            Write => (vec!["write", "denyoom"], vec!["@write", "@string", "@slow"]),
            Other => (vec!["fast"], vec!["@connection", "@fast"]),
        };
        Reply::Array(vec![
            Reply::Bulk(c.name.into()),
            Reply::Integer(c.arity),
            Reply::Set(flags.into_iter().map(|f| Reply::Simple(f.into())).collect()),
            Reply::Integer(c.keys.0),
            Reply::Integer(c.keys.1),
            Reply::Integer(c.keys.2),
            // Redis 7's four more: ACL categories, tips, key specs, subcommands.
            Reply::Set(
                categories
                    .into_iter()
                    .map(|f| Reply::Simple(f.into()))
                    .collect(),
            ),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    };
    let named = |names: &[Vec<u8>]| -> Vec<&'static Spec> {
        if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names
                .iter()
                .filter_map(|n| find(&text(n).to_ascii_lowercase()))
                .collect()
        }
    };
    match a.split_first() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some((sub, rest)) => match text(sub).to_ascii_lowercase().as_str() {
            "count" => Reply::Integer(COMMANDS.len() as i64),
            "info" => Reply::Array(named(rest).into_iter().map(info).collect()),
            "docs" => Reply::Map(
                named(rest)
                    .into_iter()
                    .map(|c| {
                        let group = if c.name.starts_with("ckv.") {
                            "chordkv"
                        } else if c.kind == Other {
                            "connection"
                        } else {
                            "string"
                        };
                        let doc = Reply::Map(vec![
                            (
                                Reply::Bulk(b"summary".to_vec()),
                                Reply::Bulk(c.summary.into()),
                            ),
                            (
                                Reply::Bulk(b"since".to_vec()),
                                Reply::Bulk(b"1.0.0".to_vec()),
                            ),
                            (Reply::Bulk(b"group".to_vec()), Reply::Bulk(group.into())),
                        ]);
                        (Reply::Bulk(c.name.into()), doc)
                    })
                    .collect(),
            ),
            other => err(format!(
                "unknown subcommand '{other}'. Try COMMAND, COMMAND COUNT, COMMAND INFO, \
                 COMMAND DOCS."
            )),
        },
    }
}

/// `CONFIG GET pattern…`: the few settings tools ask about (redis-benchmark reads `save` and
/// `appendonly`); anything else matches nothing. `CONFIG SET` is refused.
pub(super) fn config(a: &[Vec<u8>]) -> Reply {
    if !text(&a[0]).eq_ignore_ascii_case("get") || a.len() < 2 {
        return err("chordkv takes CONFIG GET only; its settings are the node's flags");
    }
    let known = [("save", ""), ("appendonly", "no"), ("databases", "1")];
    let mut pairs = Vec::new();
    for pattern in &a[1..] {
        let p = text(pattern).to_ascii_lowercase();
        for (k, v) in known {
            if p == "*" || p == k {
                pairs.push((Reply::Bulk(k.into()), Reply::Bulk(v.into())));
            }
        }
    }
    Reply::Map(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_in_the_table_is_found_and_has_a_sane_arity() {
        for c in COMMANDS {
            assert_eq!(
                find(c.name).map(|f| (f.name, f.arity)),
                Some((c.name, c.arity))
            );
            assert!(c.arity != 0, "{}", c.name);
            assert_eq!(c.name, c.name.to_ascii_lowercase());
        }
        assert!(find("GET").is_none(), "lookups take lowercase names");
    }
}
