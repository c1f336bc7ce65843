//! Tests of RESP request decoding and reply encoding.

use super::*;
use proptest::prelude::*;

/// What decoding a whole stream came to: the items, in order, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    items: Vec<Item>,
    /// `Ok(n)`: the stream ran out with `n` bytes of an unfinished item left in the buffer.
    end: Result<usize, FrameError>,
}

/// Decodes `stream` fed in chunks of the sizes `chunks` gives (the last repeated), checking
/// after each `Ok(None)` that the buffer and the decoder hold no more than the limits allow.
fn decode_chunked(limits: Limits, stream: &[u8], chunks: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied();
    let mut size = 1;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    return Outcome { items, end: Err(e) };
                }
            }
        }
        assert!(buf.len() <= limits.max_pending(), "buffer over its bound");
        assert!(
            decoder.held() <= limits.max_command,
            "decoder over its bound"
        );
        if rest.is_empty() {
            return Outcome {
                items,
                end: Ok(buf.len()),
            };
        }
        size = sizes.next().unwrap_or(size).max(1);
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        buf.extend_from_slice(chunk);
        rest = after;
    }
}

fn decode_all(limits: Limits, stream: &[u8]) -> Outcome {
    decode_chunked(limits, stream, &[stream.len()])
}

fn command(args: &[&str]) -> Item {
    Item::Command(args.iter().map(|a| a.as_bytes().to_vec()).collect())
}

fn refused(reason: &str) -> Item {
    Item::Refused(reason.into())
}

/// `args` as a client sends them: a multibulk array of bulk strings.
fn multibulk<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    Reply::Array(args.iter().map(|a| Reply::bulk(a.as_ref())).collect()).to_bytes(Protocol::Resp2)
}

fn tiny() -> Limits {
    Limits {
        max_args: 3,
        max_bulk: 5,
        max_command: 8,
        max_inline: 16,
    }
}

fn err(text: &str) -> Result<usize, FrameError> {
    Err(FrameError::Protocol(text.into()))
}

#[test]
fn decode_table() {
    let long_count = format!("*{}\r\n", "1".repeat(MAX_HEADER + 1));
    let long_len = format!("*1\r\n${}", "1".repeat(MAX_HEADER + 1));
    let max_count = format!("*{}\r\n", "1".repeat(MAX_HEADER));
    let pipeline = [
        &b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n\r\n*0\r\n"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\nget b\n",
    ]
    .concat();
    // (name, limits, input, items, how the stream ends)
    type Case = (
        &'static str,
        Limits,
        Vec<u8>,
        Vec<Item>,
        Result<usize, FrameError>,
    );
    let cases: Vec<Case> = Vec::from([
        // Multibulk.
        (
            "empty stream",
            Limits::default(),
            b"".to_vec(),
            vec![],
            Ok(0),
        ),
        (
            "ping",
            Limits::default(),
            b"*1\r\n$4\r\nPING\r\n".to_vec(),
            vec![command(&["PING"])],
            Ok(0),
        ),
        (
            "set with an empty value",
            Limits::default(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec(),
            vec![command(&["SET", "k", ""])],
            Ok(0),
        ),
        (
            "binary payload holding CRLF and a star",
            Limits::default(),
            b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n*\0\r\n".to_vec(),
            vec![Item::Command(vec![b"GET".to_vec(), b"\r\n*\0".to_vec()])],
            Ok(0),
        ),
        (
            "empty commands are skipped",
            Limits::default(),
            b"*0\r\n*-1\r\n*-5\r\n".to_vec(),
            vec![],
            Ok(0),
        ),
        (
            "empty command then ping",
            Limits::default(),
            b"*0\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            vec![command(&["PING"])],
            Ok(0),
        ),
        (
            "incomplete count",
            Limits::default(),
            b"*1\r".to_vec(),
            vec![],
            Ok(3),
        ),
        (
            "incomplete length",
            Limits::default(),
            b"*1\r\n$4".to_vec(),
            vec![],
            Ok(2),
        ),
        (
            "incomplete payload",
            Limits::default(),
            b"*1\r\n$4\r\nPI".to_vec(),
            vec![],
            Ok(2),
        ),
        (
            "payload without its CRLF yet",
            Limits::default(),
            b"*1\r\n$4\r\nPING\r".to_vec(),
            vec![],
            Ok(5),
        ),
        (
            "count line of the longest length",
            Limits::default(),
            max_count.into_bytes(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count not a number",
            Limits::default(),
            b"*x\r\n".to_vec(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count with a leading zero",
            Limits::default(),
            b"*01\r\n".to_vec(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count with a plus",
            Limits::default(),
            b"*+1\r\n".to_vec(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count empty",
            Limits::default(),
            b"*\r\n".to_vec(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count over i64",
            Limits::default(),
            b"*9223372036854775808\r\n".to_vec(),
            vec![],
            err("invalid multibulk length"),
        ),
        (
            "count over max_args",
            Limits::default(),
            b"*65537\r\n".to_vec(),
            vec![],
            err("invalid multibulk length: 65537 arguments, this node takes at most 65536"),
        ),
        (
            "count line too long",
            Limits::default(),
            long_count.into_bytes(),
            vec![],
            err("too big mbulk count string"),
        ),
        (
            "count line with CR alone",
            Limits::default(),
            b"*1\rx".to_vec(),
            vec![],
            err("mbulk count string not ended by CRLF"),
        ),
        (
            "integer for an argument",
            Limits::default(),
            b"*2\r\n:1\r\n".to_vec(),
            vec![],
            err("expected '$', got ':'"),
        ),
        (
            "nested array",
            Limits::default(),
            b"*1\r\n*1\r\n".to_vec(),
            vec![],
            err("expected '$', got '*'"),
        ),
        (
            "control byte for an argument",
            Limits::default(),
            b"*1\r\n\x01".to_vec(),
            vec![],
            err("expected '$', got '\\x01'"),
        ),
        (
            "null bulk",
            Limits::default(),
            b"*1\r\n$-1\r\n".to_vec(),
            vec![],
            err("invalid bulk length"),
        ),
        (
            "length not a number",
            Limits::default(),
            b"*1\r\n$x\r\n".to_vec(),
            vec![],
            err("invalid bulk length"),
        ),
        (
            "length with a leading zero",
            Limits::default(),
            b"*1\r\n$01\r\n".to_vec(),
            vec![],
            err("invalid bulk length"),
        ),
        (
            "length over 512 MiB",
            Limits::default(),
            b"*1\r\n$536870913\r\n".to_vec(),
            vec![],
            err("invalid bulk length"),
        ),
        (
            "length line too long",
            Limits::default(),
            long_len.into_bytes(),
            vec![],
            err("too big bulk count string"),
        ),
        (
            "payload not followed by CRLF",
            Limits::default(),
            b"*1\r\n$4\r\nPINGxx".to_vec(),
            vec![],
            err("argument 0 not followed by CRLF"),
        ),
        (
            "payload longer than announced",
            Limits::default(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nkk\r\n".to_vec(),
            vec![],
            err("argument 1 not followed by CRLF"),
        ),
        // Bounds that keep the framing: the command is refused whole and the next one served.
        (
            "argument over max_bulk",
            tiny(),
            b"*2\r\n$3\r\nSET\r\n$6\r\nabcdef\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            vec![
                refused("value too large: argument 1 is 6 bytes, this node takes at most 5"),
                command(&["PING"]),
            ],
            Ok(0),
        ),
        (
            "arguments over max_command",
            tiny(),
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\nval\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
            vec![
                refused(
                    "command too large: arguments 0 to 2 come to 9 bytes, this node takes at most 8",
                ),
                command(&["PING"]),
            ],
            Ok(0),
        ),
        (
            "the first bound broken is the one named",
            tiny(),
            b"*3\r\n$5\r\nHELLO\r\n$4\r\nabcd\r\n$9\r\n123456789\r\n".to_vec(),
            vec![refused(
                "command too large: arguments 0 to 1 come to 9 bytes, this node takes at most 8",
            )],
            Ok(0),
        ),
        (
            "a refused command's later headers are still checked",
            tiny(),
            b"*3\r\n$6\r\nabcdef\r\n:1\r\n".to_vec(),
            vec![],
            err("expected '$', got ':'"),
        ),
        (
            "a refused argument's CRLF is still checked",
            tiny(),
            b"*1\r\n$6\r\nabcdefxx".to_vec(),
            vec![],
            err("argument 0 not followed by CRLF"),
        ),
        // Inline commands.
        (
            "inline ping",
            Limits::default(),
            b"PING\r\n".to_vec(),
            vec![command(&["PING"])],
            Ok(0),
        ),
        (
            "inline with LF alone",
            Limits::default(),
            b"PING\n".to_vec(),
            vec![command(&["PING"])],
            Ok(0),
        ),
        (
            "inline incomplete",
            Limits::default(),
            b"PING\r".to_vec(),
            vec![],
            Ok(5),
        ),
        (
            "inline arguments split on any whitespace",
            Limits::default(),
            b"  set\tk \x0b v  \r\n".to_vec(),
            vec![command(&["set", "k", "v"])],
            Ok(0),
        ),
        (
            "inline CR inside the line separates",
            Limits::default(),
            b"get\rk\r\n".to_vec(),
            vec![command(&["get", "k"])],
            Ok(0),
        ),
        (
            "inline double quotes",
            Limits::default(),
            b"set k \"a b\" \"\"\r\n".to_vec(),
            vec![command(&["set", "k", "a b", ""])],
            Ok(0),
        ),
        (
            "inline double-quote escapes",
            Limits::default(),
            b"x \"\\x41\\x7a\\n\\r\\t\\b\\a\\\\\\\"\\q\\xZZ\"\n".to_vec(),
            vec![command(&["x", "Az\n\r\t\x08\x07\\\"qxZZ"])],
            Ok(0),
        ),
        (
            "inline hex escapes take any case and reach every byte",
            Limits::default(),
            b"x \"\\xfF\\x00\"\n".to_vec(),
            vec![Item::Command(vec![b"x".to_vec(), vec![0xff, 0x00]])],
            Ok(0),
        ),
        (
            "inline single quotes",
            Limits::default(),
            b"x 'it\\'s' 'a\\nb \"q\"'\n".to_vec(),
            vec![command(&["x", "it's", "a\\nb \"q\""])],
            Ok(0),
        ),
        (
            "inline quotes after unquoted text join it",
            Limits::default(),
            b"foo\"bar baz\" x\n".to_vec(),
            vec![command(&["foobar baz", "x"])],
            Ok(0),
        ),
        (
            "inline NUL is an ordinary byte",
            Limits::default(),
            b"a\0b\n".to_vec(),
            vec![command(&["a\0b"])],
            Ok(0),
        ),
        (
            "inline unclosed double quote",
            Limits::default(),
            b"set k \"abc\n".to_vec(),
            vec![],
            err("unbalanced quotes in request"),
        ),
        (
            "inline unclosed single quote",
            Limits::default(),
            b"set k 'abc\n".to_vec(),
            vec![],
            err("unbalanced quotes in request"),
        ),
        (
            "inline backslash at the end of a quote",
            Limits::default(),
            b"set k \"abc\\\n".to_vec(),
            vec![],
            err("unbalanced quotes in request"),
        ),
        (
            "inline closing quote followed by text",
            Limits::default(),
            b"set k \"a\"b\n".to_vec(),
            vec![],
            err("unbalanced quotes in request"),
        ),
        (
            "empty and blank lines are skipped",
            Limits::default(),
            b"\r\n\n  \t \r\n\x0c\n".to_vec(),
            vec![],
            Ok(0),
        ),
        (
            "inline line at max_inline",
            tiny(),
            b"aaaaa bbb cccccc\n".to_vec(),
            vec![refused(
                "value too large: argument 2 is 6 bytes, this node takes at most 5",
            )],
            Ok(0),
        ),
        (
            "inline line over max_inline",
            tiny(),
            b"aaaaa bbb ccccccc\n".to_vec(),
            vec![],
            err("too big inline request"),
        ),
        (
            "inline line over max_inline, unfinished",
            tiny(),
            b"aaaaa bbb ccccccc".to_vec(),
            vec![],
            err("too big inline request"),
        ),
        (
            "inline line at max_inline, unfinished",
            tiny(),
            b"aaaaa bbb cccccc".to_vec(),
            vec![],
            Ok(16),
        ),
        (
            "inline over max_args",
            tiny(),
            b"a b c d\nping\n".to_vec(),
            vec![
                refused("too many arguments: 4, this node takes at most 3"),
                command(&["ping"]),
            ],
            Ok(0),
        ),
        (
            "inline over max_command",
            tiny(),
            b"abc defg hi\n".to_vec(),
            vec![refused(
                "command too large: arguments 0 to 2 come to 9 bytes, this node takes at most 8",
            )],
            Ok(0),
        ),
        // Pipelines mixing both forms.
        (
            "pipeline",
            Limits::default(),
            pipeline,
            vec![
                command(&["GET", "a"]),
                command(&["PING"]),
                command(&["SET", "b", "2"]),
                command(&["get", "b"]),
            ],
            Ok(0),
        ),
        (
            "pipeline up to bad data",
            Limits::default(),
            b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$-3\r\nPING\r\n".to_vec(),
            vec![command(&["PING"]), command(&["PING"])],
            err("invalid bulk length"),
        ),
    ]);
    for (name, limits, input, items, end) in cases {
        let want = Outcome { items, end };
        assert_eq!(decode_all(limits, &input), want, "{name}");
        assert_eq!(
            decode_chunked(limits, &input, &[1]),
            want,
            "{name}, byte by byte"
        );
    }
}

#[test]
fn a_failed_decoder_repeats_its_error() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*x\r\n"[..]);
    let e = decoder.decode(&mut buf).expect_err("bad count");
    buf.clear();
    buf.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(decoder.decode(&mut buf), Err(e));
}

#[test]
fn protocol_errors_reply_as_redis_does() {
    let e = FrameError::Protocol("invalid bulk length".into());
    assert_eq!(
        e.reply().to_bytes(Protocol::Resp2),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
}

/// A pipeline of every kind of item, cut at every point and fed byte by byte, decodes as it does
/// whole.
#[test]
fn a_pipeline_decodes_the_same_under_every_split() {
    let mut stream = Vec::new();
    stream.extend(multibulk(&["SET", "key", "value"]));
    stream.extend(b"*0\r\nget \"k y\" 'x'\r\n\n");
    stream.extend(multibulk(&["SET", "big", "0123456789"])); // refused: an argument over 5
    stream.extend(multibulk(&["MSET", "ab", "cd", "ef"])); // refused: 10 bytes in all, over 8
    stream.extend(b"PING\n");
    stream.extend(multibulk(&["GET", "\r\n"]));
    stream.extend(b"*1\r\n$4\r\nPI");
    let limits = Limits {
        max_bulk: 5,
        max_command: 8,
        ..Limits::default()
    };
    let whole = decode_all(limits, &stream);
    assert_eq!(
        whole,
        Outcome {
            items: vec![
                refused(
                    "command too large: arguments 0 to 2 come to 11 bytes, this node takes at most 8"
                ),
                command(&["get", "k y", "x"]),
                refused("value too large: argument 2 is 10 bytes, this node takes at most 5"),
                refused(
                    "command too large: arguments 0 to 3 come to 10 bytes, this node takes at most 8"
                ),
                command(&["PING"]),
                command(&["GET", "\r\n"]),
            ],
            end: Ok(2),
        }
    );
    for split in 0..=stream.len() {
        assert_eq!(
            decode_chunked(limits, &stream, &[split, stream.len()]),
            whole,
            "split at {split}"
        );
    }
    assert_eq!(decode_chunked(limits, &stream, &[1]), whole, "byte by byte");
}

/// A 20 MiB argument, over the 4 MiB bound, streams through in 64 KiB reads without the decoder
/// or the buffer holding it: the command is refused, and the next one in the stream served.
#[test]
fn an_oversized_argument_is_skipped_without_buffering_it() {
    const READ: usize = 64 << 10;
    let big = 20 << 20;
    let mut stream = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${big}\r\n").into_bytes();
    stream.resize(stream.len() + big, b'v');
    stream.extend(b"\r\n");
    stream.extend(multibulk(&["GET", "k"]));

    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut peak = 0;
    for chunk in stream.chunks(READ) {
        buf.extend_from_slice(chunk);
        peak = peak.max(buf.len());
        while let Some(item) = decoder.decode(&mut buf).expect("good stream") {
            items.push(item);
        }
        peak = peak.max(decoder.held());
    }
    assert_eq!(
        items,
        vec![
            refused(&format!(
                "value too large: argument 2 is {big} bytes, this node takes at most {}",
                4 << 20
            )),
            command(&["GET", "k"]),
        ]
    );
    assert!(buf.is_empty());
    assert!(peak <= READ + MAX_HEADER + 2, "held {peak} bytes at once");
}

/// An array announcing many arguments reserves room for only a few until they arrive.
#[test]
fn an_announced_count_is_not_trusted_for_memory() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*65536\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    let State::Multibulk(m) = &decoder.state else {
        panic!("expected a command under way, in {:?}", decoder.state);
    };
    assert!(m.args.capacity() <= PREALLOC_ARGS);
}

#[test]
fn parse_int_table() {
    let cases: &[(&[u8], Option<i64>)] = &[
        (b"0", Some(0)),
        (b"7", Some(7)),
        (b"-1", Some(-1)),
        (b"1234567890", Some(1_234_567_890)),
        (b"9223372036854775807", Some(i64::MAX)),
        (b"-9223372036854775808", Some(i64::MIN)),
        (b"9223372036854775808", None),
        (b"-9223372036854775809", None),
        (b"", None),
        (b"-", None),
        (b"-0", None),
        (b"00", None),
        (b"01", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1a", None),
    ];
    for &(text, want) in cases {
        assert_eq!(parse_int(text), want, "{}", text.escape_ascii());
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

#[test]
fn encode_golden_bytes() {
    use Reply::*;
    let cases: Vec<(Reply, &[u8], &[u8])> = vec![
        // (reply, RESP2, RESP3)
        (Reply::ok(), b"+OK\r\n", b"+OK\r\n"),
        (Simple("a\r\nb\nc".into()), b"+a  b c\r\n", b"+a  b c\r\n"),
        (
            Reply::error("no such key"),
            b"-ERR no such key\r\n",
            b"-ERR no such key\r\n",
        ),
        (
            Error("WRONGTYPE x\r\n+OK".into()),
            b"-WRONGTYPE x  +OK\r\n",
            b"-WRONGTYPE x  +OK\r\n",
        ),
        (Integer(0), b":0\r\n", b":0\r\n"),
        (
            Integer(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        ),
        (Reply::bulk("hi"), b"$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
        (Bulk(b"\r\n".to_vec()), b"$2\r\n\r\n\r\n", b"$2\r\n\r\n\r\n"),
        (Bulk(vec![]), b"$0\r\n\r\n", b"$0\r\n\r\n"),
        (Null, b"$-1\r\n", b"_\r\n"),
        (NullArray, b"*-1\r\n", b"_\r\n"),
        (Array(vec![]), b"*0\r\n", b"*0\r\n"),
        (
            Array(vec![Integer(1), Null, Array(vec![Reply::bulk("x")])]),
            b"*3\r\n:1\r\n$-1\r\n*1\r\n$1\r\nx\r\n",
            b"*3\r\n:1\r\n_\r\n*1\r\n$1\r\nx\r\n",
        ),
        (
            Map(vec![
                (Reply::bulk("a"), Integer(1)),
                (Simple("b".into()), Boolean(true)),
            ]),
            b"*4\r\n$1\r\na\r\n:1\r\n+b\r\n:1\r\n",
            b"%2\r\n$1\r\na\r\n:1\r\n+b\r\n#t\r\n",
        ),
        (Map(vec![]), b"*0\r\n", b"%0\r\n"),
        (
            Set(vec![Reply::bulk("a"), Reply::bulk("b")]),
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"~2\r\n$1\r\na\r\n$1\r\nb\r\n",
        ),
        (Double(3.0), b"$3\r\n3.0\r\n", b",3.0\r\n"),
        (Double(-0.1), b"$4\r\n-0.1\r\n", b",-0.1\r\n"),
        (Double(1e300), b"$5\r\n1e300\r\n", b",1e300\r\n"),
        (Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n"),
        (Double(f64::NEG_INFINITY), b"$4\r\n-inf\r\n", b",-inf\r\n"),
        (Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n"),
        (Boolean(true), b":1\r\n", b"#t\r\n"),
        (Boolean(false), b":0\r\n", b"#f\r\n"),
        (
            Verbatim(VerbatimFormat::Text, b"Some string".to_vec()),
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        ),
        (
            Verbatim(VerbatimFormat::Markdown, b"# a".to_vec()),
            b"$3\r\n# a\r\n",
            b"=7\r\nmkd:# a\r\n",
        ),
    ];
    for (reply, resp2, resp3) in cases {
        assert_eq!(
            reply.to_bytes(Protocol::Resp2).escape_ascii().to_string(),
            resp2.escape_ascii().to_string(),
            "{reply:?} in RESP2"
        );
        assert_eq!(
            reply.to_bytes(Protocol::Resp3).escape_ascii().to_string(),
            resp3.escape_ascii().to_string(),
            "{reply:?} in RESP3"
        );
    }
}

#[test]
fn encode_appends() {
    let mut out = b"x".to_vec();
    Reply::ok().encode(Protocol::default(), &mut out);
    Reply::Null.encode(Protocol::Resp3, &mut out);
    assert_eq!(out, b"x+OK\r\n_\r\n");
}

#[test]
fn doubles_read_back_to_themselves() {
    for x in [
        0.1,
        -2.5e-300,
        1.0 / 3.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        123456789.0,
    ] {
        let text = double_text(x);
        assert_eq!(text.parse::<f64>().ok(), Some(x), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn commands() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
    let arg = prop::collection::vec(any::<u8>(), 0..40);
    let command = prop::collection::vec(arg, 1..6);
    prop::collection::vec(command, 1..6)
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..50, 1..20)
}

/// `arg` as an inline argument: double-quoted, every byte as a `\xHH` escape.
fn quoted(arg: &[u8]) -> String {
    let escaped: String = arg.iter().map(|b| format!("\\x{b:02x}")).collect();
    format!("\"{escaped}\"")
}

proptest! {
    /// Commands sent as multibulk arrays, in any chunking, decode to themselves.
    #[test]
    fn multibulk_commands_round_trip(commands in commands(), chunks in chunks()) {
        let stream: Vec<u8> = commands.iter().flat_map(|c| multibulk(c)).collect();
        let want = Outcome {
            items: commands.into_iter().map(Item::Command).collect(),
            end: Ok(0),
        };
        prop_assert_eq!(decode_chunked(Limits::default(), &stream, &chunks), want);
    }

    /// Commands sent inline with every byte escaped decode to themselves.
    #[test]
    fn quoted_inline_commands_round_trip(commands in commands(), chunks in chunks()) {
        let stream: Vec<u8> = commands
            .iter()
            .flat_map(|c| {
                let line: Vec<String> = c.iter().map(|a| quoted(a)).collect();
                format!("{}\r\n", line.join(" ")).into_bytes()
            })
            .collect();
        let want = Outcome {
            items: commands.into_iter().map(Item::Command).collect(),
            end: Ok(0),
        };
        prop_assert_eq!(decode_chunked(Limits::default(), &stream, &chunks), want);
    }

    /// Whatever the bytes, the outcome does not depend on how they are cut into reads, and the
    /// bounds hold (`decode_chunked` checks them).
    #[test]
    fn any_stream_decodes_the_same_in_any_chunking(
        stream in prop::collection::vec(
            prop_oneof![
                Just(b'*'), Just(b'$'), Just(b'\r'), Just(b'\n'), Just(b'"'), Just(b'\''),
                Just(b'\\'), Just(b' '), b'0'..=b'9', any::<u8>(),
            ],
            0..200,
        ),
        chunks in chunks(),
    ) {
        for limits in [Limits::default(), tiny()] {
            prop_assert_eq!(
                decode_chunked(limits, &stream, &chunks),
                decode_all(limits, &stream)
            );
        }
    }
}
