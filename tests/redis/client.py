#!/usr/bin/env python3
"""Drives a Redis-protocol port with the real `redis` Python package and checks every answer.

`tests/redis.rs` runs this script against chordkv nodes started with `--resp ADDR`, and, as the
reference, against a real `redis-server`: everything outside a `--chordkv` guard must hold
against both, so the expectations are Redis's own and not what the gateway happens to answer.
The checks behind `--chordkv` (CKV.* commands, CONFLICT, TTL options refused, SELECT 1 refused,
INFO's `# Ring`) are chordkv's contract only.

Usage: client.py SCENARIO --port P [--port P ...] [--protocol 2|3] [--chordkv] [auth options]

Scenarios:
  commands  every supported command on an empty store (it starts with FLUSHALL), exact answers
  pipeline  one pipeline of 1,000 commands on one connection, an error in the middle of it
  ring      1,000 keys written through each port and read back through each of the others
  siblings  (chordkv) a blind CKV.PUT makes siblings; GET is a CONFLICT; CKV.PUT with the
            context from CKV.SIBLINGS resolves them
  auth      AUTH and HELLO AUTH with a read-write and a read-only name and secret

Exits 0 when every check held. On the first failed check it prints `FAILED: what: got ..., want
...` to stderr and exits 1; any other exception (a connection refused, a protocol error in the
client) exits non-zero with its traceback.
"""

import argparse
import sys
import time
import warnings

import redis
from redis._parsers.base import BaseParser


class Failed(Exception):
    """A check did not hold."""


def check(what, got, want):
    if got != want:
        raise Failed(f"{what}: got {got!r}, want {want!r}")


def full_error(e):
    """The error line the server sent. redis-py strips the codes it maps to exception classes
    (ERR, NOAUTH, WRONGPASS, NOPERM, ...) from the message and keeps them in `status_code`."""
    code = getattr(e, "status_code", None)
    msg = str(e)
    if code and code in BaseParser.EXCEPTION_CLASSES:
        return f"{code} {msg}"
    return msg


def fails(what, call, want=None, prefix=None, contains=None):
    """Checks that `call()` gets an error reply: exactly `want`, or starting with `prefix`, or
    containing `contains` (compared without case). Returns the error line."""
    try:
        got = call()
    except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError) as e:
        # NOAUTH and WRONGPASS come as AuthenticationError, which is no ResponseError.
        line = full_error(e)
    else:
        raise Failed(f"{what}: got {got!r}, want an error reply")
    if want is not None and line != want:
        raise Failed(f"{what}: got error {line!r}, want {want!r}")
    if prefix is not None and not line.startswith(prefix):
        raise Failed(f"{what}: got error {line!r}, want one starting {prefix!r}")
    if contains is not None and contains.lower() not in line.lower():
        raise Failed(f"{what}: got error {line!r}, want one that mentions {contains!r}")
    return line


def raw(r, *args):
    """Sends one command and returns the reply as parsed, without redis-py's per-command
    callbacks (which would turn INFO into a dict, or a RESP2 HELLO into something else)."""
    conn = r.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        r.connection_pool.release(conn)


def pairs(reply):
    """A map reply as a dict: RESP3 sends a map, RESP2 a flat array of keys and values."""
    if isinstance(reply, dict):
        return reply
    check("a flat key/value array has an even length", len(reply) % 2, 0)
    return dict(zip(reply[0::2], reply[1::2]))


def connect(port, protocol, **kw):
    return redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=30, **kw)


def wait_for(what, deadline_s, probe):
    """Polls `probe()` (which returns (done, last value)) until done or the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        done, last = probe()
        if done:
            return last
        if time.monotonic() > deadline:
            raise Failed(f"{what}: still {last!r} after {deadline_s} s")
        time.sleep(0.05)


def sections(scenario, steps):
    """Runs each (name, step) in turn; a failed check ends its step only. Raises Failed with
    every step's failure at the end, so one run names everything that is wrong."""
    failures = []
    for name, step in steps:
        try:
            step()
        except Failed as e:
            failures.append(f"[{name}] {e}")
        except redis.exceptions.RedisError as e:
            failures.append(f"[{name}] unexpected {type(e).__name__}: {full_error(e)}")
    if failures:
        raise Failed(f"{len(failures)} of {len(steps)} parts of {scenario} failed:\n  " + "\n  ".join(failures))


def scenario_commands(args):
    p = args.protocol
    r = connect(args.port[0], p)
    # Keys of their own per protocol: both runs may share a store, and a step's keys are its own.
    def k(name):
        return f"resp{p}:{name}"

    state = {}

    def connection():
        check("PING", r.ping(), True)
        check("PING msg", raw(r, "PING", "hello"), b"hello")
        check("ECHO", r.echo("hi"), b"hi")
        check("ECHO binary", r.echo(b"\x00\xff\r\n"), b"\x00\xff\r\n")
        hello = pairs(raw(r, "HELLO", str(p)))
        check("HELLO proto", hello.get(b"proto"), p)
        check("HELLO has an id", isinstance(hello.get(b"id"), int), True)
        hello = pairs(raw(r, "HELLO", str(p), "SETNAME", "from-hello"))
        check("HELLO SETNAME proto", hello.get(b"proto"), p)
        check("CLIENT GETNAME after HELLO SETNAME", raw(r, "CLIENT", "GETNAME"), b"from-hello")
        fails("HELLO 4", lambda: raw(r, "HELLO", "4"), prefix="NOPROTO")
        check("SELECT 0", r.select(0), True)
        check("CLIENT SETNAME", r.client_setname("conn-a"), True)
        check("CLIENT GETNAME", raw(r, "CLIENT", "GETNAME"), b"conn-a")
        cid = r.client_id()
        check("CLIENT ID is an integer", isinstance(cid, int), True)
        state["cid"] = cid
        info = r.client_info()
        check("CLIENT INFO id", info.get("id"), cid)
        check("CLIENT INFO name", info.get("name"), "conn-a")
        other = connect(args.port[0], p)
        state["other"] = other
        check("another connection has another CLIENT ID", other.client_id() != cid, True)
        check("another connection has no name", raw(other, "CLIENT", "GETNAME"), None)

    def command_table():
        count = r.command_count()
        check("COMMAND COUNT is a positive integer", isinstance(count, int) and count > 0, True)
        commands = r.command()
        check("COMMAND lists COMMAND COUNT commands", len(commands), count)
        for name, arity in [("get", 2), ("set", -3), ("mget", -2), ("incrbyfloat", 3), ("ping", -1)]:
            c = commands.get(name)
            check(f"COMMAND lists {name}", c is not None, True)
            check(f"COMMAND {name} arity", c["arity"], arity)
        check("COMMAND get first key", commands["get"]["first_key_pos"], 1)
        check("COMMAND mget last key", commands["mget"]["last_key_pos"], -1)
        docs = pairs(raw(r, "COMMAND", "DOCS", "get"))
        check("COMMAND DOCS get names get only", list(docs.keys()), [b"get"])
        summary = pairs(docs[b"get"]).get(b"summary")
        check("COMMAND DOCS get has a summary", isinstance(summary, bytes) and len(summary) > 0, True)

    def flush_and_count():
        check("FLUSHALL", r.flushall(), True)
        check("DBSIZE empty", r.dbsize(), 0)
        check("MSET 5", r.mset({k(f"d{i}"): str(i) for i in range(5)}), True)
        check("DBSIZE 5", r.dbsize(), 5)
        # (DBSIZE after a DEL is the DBSIZE and INFO step's.)
        check("FLUSHDB", r.flushdb(), True)
        check("DBSIZE after FLUSHDB", r.dbsize(), 0)
        check("GET after FLUSHDB", r.get(k("d2")), None)

    def get_and_set():
        check("SET", r.set(k("k"), "v"), True)
        check("GET", r.get(k("k")), b"v")
        check("GET missing", r.get(k("missing")), None)
        check("SET overwrites", r.set(k("k"), "w"), True)
        check("GET overwritten", r.get(k("k")), b"w")
        check("SET empty", r.set(k("empty"), ""), True)
        check("GET empty is an empty string, not nil", r.get(k("empty")), b"")
        check("EXISTS empty", r.exists(k("empty")), 1)
        check("STRLEN empty", r.strlen(k("empty")), 0)
        binary = b"\x00\r\n\xff\xfe$-1\r\n*2\r\n" * 3
        bkey = k("bin\x00key").encode() + b"\xff"
        check("SET binary", r.set(bkey, binary), True)
        check("GET binary", r.get(bkey), binary)
        check("SET NX new", r.set(k("nx"), "1", nx=True), True)
        check("SET NX existing", r.set(k("nx"), "2", nx=True), None)
        check("GET after SET NX", r.get(k("nx")), b"1")
        check("SET XX missing", r.set(k("xx"), "1", xx=True), None)
        check("GET after SET XX missing", r.get(k("xx")), None)
        check("SET XX existing", r.set(k("nx"), "3", xx=True), True)
        check("GET after SET XX", r.get(k("nx")), b"3")
        check("SET GET", r.set(k("nx"), "4", get=True), b"3")
        check("GET after SET GET", r.get(k("nx")), b"4")
        check("SET GET missing", r.set(k("sg"), "x", get=True), None)
        check("GET after SET GET missing", r.get(k("sg")), b"x")
        fails("SET NX XX", lambda: raw(r, "SET", k("k"), "v", "NX", "XX"), want="ERR syntax error")
        fails("SET bad option", lambda: raw(r, "SET", k("k"), "v", "BOGUS"), want="ERR syntax error")
        check("GET after refused SETs", r.get(k("k")), b"w")

    def errors():
        fails("GET arity", lambda: raw(r, "GET"), want="ERR wrong number of arguments for 'get' command")
        fails("GET arity 2", lambda: raw(r, "GET", "a", "b"), want="ERR wrong number of arguments for 'get' command")
        fails("SET arity", lambda: raw(r, "SET", "k"), want="ERR wrong number of arguments for 'set' command")
        fails("unknown command", lambda: raw(r, "NOSUCHCMD", "a"), prefix="ERR unknown command")
        check("the connection serves on after errors", r.ping(), True)

    def chordkv_only():
        # No TTLs: every expiry option is refused and nothing is written.
        check("SET before TTLs", r.set(k("ttl"), "v"), True)
        for opt in [["EX", "10"], ["PX", "10000"], ["EXAT", "4102444800"], ["PXAT", "4102444800000"], ["KEEPTTL"]]:
            fails(f"SET {opt[0]}", lambda: raw(r, "SET", k("ttl"), "w", *opt), prefix="ERR", contains="TTL")
        check("GET after refused TTL SETs", r.get(k("ttl")), b"v")
        fails("SELECT 1", lambda: r.select(1), prefix="ERR")
        check("the connection serves on after SELECT 1", r.get(k("ttl")), b"v")

    def setnx_getset_mget():
        check("SETNX new", r.setnx(k("snx"), "a"), True)
        check("SETNX existing", r.setnx(k("snx"), "b"), False)
        check("GET after SETNX", r.get(k("snx")), b"a")
        check("GETSET missing", r.getset(k("gs"), "one"), None)
        check("GETSET existing", r.getset(k("gs"), "two"), b"one")
        check("GET after GETSET", r.get(k("gs")), b"two")
        check("GETDEL", r.getdel(k("gs")), b"two")
        check("GETDEL again", r.getdel(k("gs")), None)
        check("EXISTS after GETDEL", r.exists(k("gs")), 0)
        check("MSET", r.mset({k("m1"): "1", k("m2"): "2", k("m3"): "3"}), True)
        check("MGET", r.mget(k("m1"), k("m2"), k("missing"), k("m3")), [b"1", b"2", None, b"3"])
        fails("MSET odd", lambda: raw(r, "MSET", k("m1"), "x", k("m2")), want="ERR wrong number of arguments for 'mset' command")
        check("GET after refused MSET", r.get(k("m1")), b"1")

    def del_exists_type():
        a, b, c = k("da"), k("db"), k("dc")
        check("MSET", r.mset({a: "1", b: "2", c: "3"}), True)
        check("EXISTS counts repeats", r.exists(a, a, k("missing"), b), 3)
        check("DEL", r.delete(a, b, k("missing")), 2)
        check("DEL again", r.delete(a), 0)
        check("UNLINK", r.unlink(c, k("missing")), 1)
        check("EXISTS after DEL and UNLINK", r.exists(a, b, c), 0)
        check("GET after DEL", r.get(a), None)
        check("SET after DEL", r.set(a, "again"), True)
        check("GET after SET after DEL", r.get(a), b"again")
        check("TYPE string", r.type(a), b"string")
        check("TYPE none", r.type(k("missing")), b"none")

    def strings():
        check("SET", r.set(k("s"), "again"), True)
        check("STRLEN", r.strlen(k("s")), 5)
        check("STRLEN missing", r.strlen(k("missing")), 0)
        ap = k("ap")
        check("APPEND new", r.append(ap, "Hello"), 5)
        check("APPEND", r.append(ap, " World"), 11)
        check("GET after APPEND", r.get(ap), b"Hello World")
        check("GETRANGE 0 4", r.getrange(ap, 0, 4), b"Hello")
        check("GETRANGE -5 -1", r.getrange(ap, -5, -1), b"World")
        check("GETRANGE 0 -1", r.getrange(ap, 0, -1), b"Hello World")
        check("GETRANGE 10 100", r.getrange(ap, 10, 100), b"d")
        check("GETRANGE 5 3", r.getrange(ap, 5, 3), b"")
        check("GETRANGE missing", r.getrange(k("missing"), 0, -1), b"")
        check("SETRANGE", r.setrange(ap, 6, "Redis"), 11)
        check("GET after SETRANGE", r.get(ap), b"Hello Redis")
        check("SETRANGE past the end pads with zeros", r.setrange(k("sr"), 3, "abc"), 6)
        check("GET padded", r.get(k("sr")), b"\x00\x00\x00abc")
        fails("SETRANGE negative", lambda: r.setrange(ap, -1, "x"), want="ERR offset is out of range")

    def counters():
        n = k("n")
        check("INCR new", r.incr(n), 1)
        check("INCR", r.incr(n), 2)
        check("INCRBY", r.incrby(n, 10), 12)
        check("DECR", r.decr(n), 11)
        check("DECRBY", r.decrby(n, 20), -9)
        check("GET counter", r.get(n), b"-9")
        check("DECR new", r.decr(k("n2")), -1)
        check("SET text", r.set(k("text"), "Hello"), True)
        fails("INCR not an integer", lambda: r.incr(k("text")), want="ERR value is not an integer or out of range")
        fails("INCRBY bad increment", lambda: raw(r, "INCRBY", n, "x"), want="ERR value is not an integer or out of range")
        check("SET max", r.set(k("big"), "9223372036854775807"), True)
        fails("INCR overflow", lambda: r.incr(k("big")), want="ERR increment or decrement would overflow")
        check("GET after overflow", r.get(k("big")), b"9223372036854775807")
        f = k("f")
        check("INCRBYFLOAT new", raw(r, "INCRBYFLOAT", f, "10.5"), b"10.5")
        check("SET float", r.set(f, "10.50"), True)
        check("INCRBYFLOAT", raw(r, "INCRBYFLOAT", f, "0.1"), b"10.6")
        check("GET float", r.get(f), b"10.6")
        check("INCRBYFLOAT via redis-py", r.incrbyfloat(f, -5), 5.6)
        check("SET exponent", r.set(k("e"), "5.0e3"), True)
        check("INCRBYFLOAT exponent", raw(r, "INCRBYFLOAT", k("e"), "2.0e2"), b"5200")
        fails("INCRBYFLOAT not a float", lambda: raw(r, "INCRBYFLOAT", k("text"), "1"), want="ERR value is not a valid float")
        fails("INCRBYFLOAT bad increment", lambda: raw(r, "INCRBYFLOAT", f, "abc"), want="ERR value is not a valid float")

    def dbsize_and_info():
        # Counted from wherever the store stands: three new keys, two of them deleted.
        before = r.dbsize()
        check("DBSIZE is an integer", isinstance(before, int), True)
        check("MSET 3 new", r.mset({k("c1"): "1", k("c2"): "2", k("c3"): "3"}), True)
        check("DBSIZE after 3 new keys", r.dbsize(), before + 3)
        check("DEL 2", r.delete(k("c1"), k("c2")), 2)
        check("DBSIZE after deleting 2", r.dbsize(), before + 1)
        text = raw(r, "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        lines = text.splitlines()
        for section in ["# Server", "# Clients", "# Keyspace"] + (["# Ring"] if args.chordkv else []):
            check(f"INFO has section {section}", section in lines, True)
        clients = [l for l in lines if l.startswith("connected_clients:")]
        check("INFO connected_clients", len(clients) == 1 and int(clients[0].split(":")[1]) >= 2, True)
        db0 = [l for l in lines if l.startswith("db0:")]
        check("INFO keyspace db0 keys", [l.split(",")[0] for l in db0], [f"db0:keys={before + 1}"])

    def same_connection():
        # Errors never closed the connection: it is the one named at the start.
        if "cid" in state:
            check("CLIENT ID at the end", r.client_id(), state["cid"])

    steps = [
        ("connection", connection),
        ("COMMAND", command_table),
        ("FLUSHALL and DBSIZE", flush_and_count),
        ("GET and SET", get_and_set),
        ("errors", errors),
        ("SETNX, GETSET, GETDEL, MGET, MSET", setnx_getset_mget),
        ("DEL, UNLINK, EXISTS, TYPE", del_exists_type),
        ("STRLEN, APPEND, GETRANGE, SETRANGE", strings),
        ("counters", counters),
        ("DBSIZE and INFO", dbsize_and_info),
        ("one connection throughout", same_connection),
    ]
    if args.chordkv:
        steps.insert(5, ("chordkv: no TTLs, one database", chordkv_only))
    sections("commands", steps)


def scenario_pipeline(args):
    r = connect(args.port[0], args.protocol)
    r.delete("pipe-counter")
    pipe = r.pipeline(transaction=False)
    want = []
    for i in range(250):
        pipe.set(f"pipe:{i}", f"v{i}")
        want.append(True)
        pipe.get(f"pipe:{i}")
        want.append(f"v{i}".encode())
        pipe.incr("pipe-counter")
        want.append(i + 1)
        pipe.append(f"pipe:{i}", "!")
        want.append(len(f"v{i}!"))
    check("pipeline length", len(pipe), 1000)
    got = pipe.execute()
    check("pipeline replies", len(got), 1000)
    for i, (g, w) in enumerate(zip(got, want)):
        check(f"pipeline reply {i}", g, w)
    check("GET after the pipeline", r.get("pipe:249"), b"v249!")

    # An error in the middle of a pipeline answers that command only.
    pipe = r.pipeline(transaction=False)
    pipe.set("pipe-x", "1")
    pipe.incr("pipe:0")
    pipe.get("pipe-x")
    got = pipe.execute(raise_on_error=False)
    check("pipeline around an error: SET", got[0], True)
    check("pipeline around an error: INCR fails", isinstance(got[1], redis.exceptions.ResponseError), True)
    check("pipeline around an error: the error", full_error(got[1]), "ERR value is not an integer or out of range")
    check("pipeline around an error: GET", got[2], b"1")


def scenario_ring(args):
    ports = args.port
    n = args.keys
    # DBSIZE is counted from what the store held before (the caller may have left keys).
    base = connect(ports[0], args.protocol).dbsize()
    for w, wport in enumerate(ports):
        writer = connect(wport, args.protocol)
        pipe = writer.pipeline(transaction=False)
        for i in range(n):
            pipe.set(f"ring:{w}:{i}", f"value {i} through {w}")
        check(f"{n} SETs through port {wport}", pipe.execute(), [True] * n)
        for r_, rport in enumerate(ports):
            if r_ == w:
                continue
            reader = connect(rport, args.protocol)
            pipe = reader.pipeline(transaction=False)
            for i in range(n):
                pipe.get(f"ring:{w}:{i}")
            got = pipe.execute()
            for i in range(n):
                check(f"GET ring:{w}:{i} through port {rport}", got[i], f"value {i} through {w}".encode())
            keys = [f"ring:{w}:{i}" for i in range(0, n, 7)]
            check(f"MGET through port {rport}", reader.mget(keys), [f"value {i} through {w}".encode() for i in range(0, n, 7)])
    total = base + n * len(ports)
    for port in ports:
        r = connect(port, args.protocol)
        wait_for(f"DBSIZE through port {port}", 30, lambda: ((d := r.dbsize()) == total, d))
    # Deletes through one node are seen through the others.
    deleter = connect(ports[-1], args.protocol)
    pipe = deleter.pipeline(transaction=False)
    for i in range(n):
        pipe.delete(f"ring:0:{i}")
    check(f"{n} DELs through port {ports[-1]}", pipe.execute(), [1] * n)
    for port in ports:
        r = connect(port, args.protocol)
        check(f"GET deleted through port {port}", r.mget([f"ring:0:{i}" for i in range(0, n, 10)]), [None] * len(range(0, n, 10)))
        wait_for(f"DBSIZE after DEL through port {port}", 30, lambda: ((d := r.dbsize()) == total - n, d))


def scenario_siblings(args):
    if not args.chordkv:
        raise Failed("the siblings scenario is chordkv's only: pass --chordkv")
    ports = args.port
    key = f"sib-resp{args.protocol}"  # one key per run: a ring serves both protocols
    first = connect(ports[0], args.protocol)
    last = connect(ports[-1], args.protocol)
    conflict = "has 2 concurrent values; read them with CKV.SIBLINGS"
    check("SET sib a", first.set(key, "a"), True)
    check("a blind CKV.PUT", raw(last, "CKV.PUT", key, "b", ""), b"OK")
    for port in ports:
        fresh = connect(port, args.protocol)
        line = fails(f"GET {key} through port {port}", lambda: fresh.get(key), prefix="CONFLICT ", contains=conflict)
        check(f"the CONFLICT line ends as the contract says (port {port})", line.endswith(conflict), True)
    fails("GET sib on the writing connection", lambda: first.get(key), prefix="CONFLICT ", contains=conflict)
    reply = raw(last, "CKV.SIBLINGS", key)
    check("CKV.SIBLINGS is [context, values]", isinstance(reply, list) and len(reply) == 2, True)
    token, values = reply
    check("the context is a non-empty bulk string", isinstance(token, bytes) and len(token) > 0, True)
    check("the siblings", sorted(values), [b"a", b"b"])
    check("CKV.SIBLINGS through another node", sorted(raw(first, "CKV.SIBLINGS", key)[1]), [b"a", b"b"])
    check("CKV.PUT with the context", raw(last, "CKV.PUT", key, "c", token), b"OK")
    for port in ports:
        check(f"GET resolved through port {port}", connect(port, args.protocol).get(key), b"c")
    reply = raw(first, "CKV.SIBLINGS", key)
    check("CKV.SIBLINGS after resolving", reply[1], [b"c"])
    check("a new context after resolving", reply[0] != token, True)

    # Three values: two blind writes beside the resolved one. Blind writes come from fresh
    # connections: a connection that read the key is a session, whose writes follow its reads.
    check("blind CKV.PUT x", raw(connect(ports[0], args.protocol), "CKV.PUT", key, "x", ""), b"OK")
    check("blind CKV.PUT y", raw(connect(ports[-1], args.protocol), "CKV.PUT", key, "y", ""), b"OK")
    fails("GET with three siblings", lambda: connect(ports[0], args.protocol).get(key), prefix="CONFLICT ", contains="has 3 concurrent values; read them with CKV.SIBLINGS")
    token, values = raw(last, "CKV.SIBLINGS", key)
    check("three siblings", sorted(values), [b"c", b"x", b"y"])
    check("CKV.PUT resolves three", raw(first, "CKV.PUT", key, "z", token), b"OK")
    check("GET after resolving three", connect(ports[-1], args.protocol).get(key), b"z")
    # DEL, as in Redis, removes the key: siblings and all, from a connection that never read it.
    check("blind CKV.PUT again", raw(connect(ports[-1], args.protocol), "CKV.PUT", key, "again", ""), b"OK")
    check("DEL a key with siblings", connect(ports[0], args.protocol).delete(key), 1)
    for port in ports:
        check(f"GET after DEL through port {port}", connect(port, args.protocol).get(key), None)


def scenario_auth(args):
    port, p = args.port[0], args.protocol

    def anonymous():
        # RESP2 and no CLIENT SETINFO on connect until authenticated: redis-py would open a
        # RESP3 connection with HELLO 3, refused before AUTH (checked below), and it takes only
        # an -ERR for SETINFO in its stride, not a -NOAUTH (which Redis 7.2 and later send too).
        with warnings.catch_warnings():
            # Newer redis-py spells this driver_info; lib_name=None works in every version.
            warnings.simplefilter("ignore", DeprecationWarning)
            return connect(port, 2, lib_name=None, lib_version=None)

    def before_and_after_auth():
        anon = anonymous()
        fails("HELLO 3 before AUTH", lambda: raw(anon, "HELLO", "3"), prefix="NOAUTH ")
        fails("GET before AUTH", lambda: anon.get("auth-k"), want="NOAUTH Authentication required.")
        fails("AUTH with a wrong secret", lambda: raw(anon, "AUTH", args.user, "wrong"), want="WRONGPASS invalid username-password pair or user is disabled.")
        fails("AUTH with an unknown name", lambda: raw(anon, "AUTH", "nobody", args.password), want="WRONGPASS invalid username-password pair or user is disabled.")
        fails("GET after a failed AUTH", lambda: anon.get("auth-k"), want="NOAUTH Authentication required.")
        check("AUTH", raw(anon, "AUTH", args.user, args.password), b"OK")
        check("SET after AUTH", anon.set("auth-k", "v1"), True)
        check("GET after AUTH", anon.get("auth-k"), b"v1")

    def on_connect():
        # redis-py authenticates on connect: AUTH name secret in RESP2, HELLO 3 AUTH in RESP3.
        writer = connect(port, p, username=args.user, password=args.password)
        check("SET as the writer", writer.set("auth-k", "v2"), True)
        reader = connect(port, p, username=args.ro_user, password=args.ro_password)
        check("GET as the reader", reader.get("auth-k"), b"v2")
        fails("SET as the reader", lambda: reader.set("auth-k", "v3"), prefix="NOPERM")
        fails("DEL as the reader", lambda: reader.delete("auth-k"), prefix="NOPERM")
        check("the reader's connection serves on", reader.get("auth-k"), b"v2")
        named = connect(port, p, username=args.ro_user, password=args.ro_password, client_name="named")
        check("CLIENT GETNAME of a client named on connect", raw(named, "CLIENT", "GETNAME"), b"named")

    def hello_auth():
        # HELLO with AUTH and SETNAME in one command, on a fresh RESP2 connection (redis-py's
        # RESP2 parser stays valid after HELLO 2; the RESP3 form is how on_connect's RESP3
        # clients connected).
        fresh = anonymous()
        hello = pairs(raw(fresh, "HELLO", "2", "AUTH", args.ro_user, args.ro_password, "SETNAME", "dash"))
        check("HELLO AUTH proto", hello.get(b"proto"), 2)
        check("CLIENT GETNAME after HELLO AUTH SETNAME", raw(fresh, "CLIENT", "GETNAME"), b"dash")
        check("GET after HELLO AUTH", fresh.get("auth-k"), b"v2")
        fails("SET after HELLO AUTH as the reader", lambda: fresh.set("auth-k", "v4"), prefix="NOPERM")
        fails("HELLO AUTH with a wrong secret", lambda: raw(anonymous(), "HELLO", str(p), "AUTH", args.user, "wrong"), want="WRONGPASS invalid username-password pair or user is disabled.")

    sections("auth", [
        ("before and after AUTH", before_and_after_auth),
        ("authenticated on connect", on_connect),
        ("HELLO AUTH", hello_auth),
    ])


SCENARIOS = {
    "commands": scenario_commands,
    "pipeline": scenario_pipeline,
    "ring": scenario_ring,
    "siblings": scenario_siblings,
    "auth": scenario_auth,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--protocol", type=int, choices=[2, 3], default=2)
    parser.add_argument("--chordkv", action="store_true", help="also check chordkv's own contract")
    parser.add_argument("--keys", type=int, default=1000, help="keys per writer in the ring scenario")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--ro-user")
    parser.add_argument("--ro-password")
    args = parser.parse_args()
    try:
        SCENARIOS[args.scenario](args)
    except Failed as e:
        print(f"FAILED ({args.scenario}, RESP{args.protocol}, ports {args.port}): {e}", file=sys.stderr)
        sys.exit(1)
    except redis.exceptions.RedisError as e:
        # An error reply where the script expected an answer, or a connection that failed.
        print(f"FAILED ({args.scenario}, RESP{args.protocol}, ports {args.port}): unexpected {type(e).__name__}: {full_error(e)}", file=sys.stderr)
        raise
    print(f"ok: {args.scenario}, RESP{args.protocol}")


if __name__ == "__main__":
    main()
