//! The Redis differential cases: scripts of requests, each run on its own connection against
//! real redis-server and against our server (at library level, or over TCP), and how their
//! replies are compared (byte for byte, unless a reply is a hash table's order, an id, a
//! time, or INFO). Included by path (`#[path = "common/redis.rs"]`) by each test that runs
//! them.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use std::time::Instant;

/// How the replies of one step are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Exact,
    /// An array whose elements may come in any order (a hash table's).
    Unordered,
    /// INFO: every `field:value` and `# Section` line we reply is in Redis's reply.
    Info,
    /// Integers differ (client ids): compared with every `:N` line masked.
    NoIds,
    /// An integer within this much of Redis's (a TTL in ms).
    Near(i64),
}

/// One write of a case: its bytes (one command or several pipelined), the replies they get,
/// and a pause after them.
#[derive(Debug, Clone)]
pub struct Step {
    pub send: Vec<u8>,
    pub replies: usize,
    pub check: Check,
    pub sleep_ms: u64,
}

/// A script, run on one connection; `closes`: the server closes it after the last step.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub steps: Vec<Step>,
    pub closes: bool,
}

/// `args` as a RESP multibulk request.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The words of `line` (split on spaces; no quoting) as one multibulk step.
fn c(line: &str) -> Step {
    let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    raw(&encode(&words), 1)
}

fn check(mut s: Step, check: Check) -> Step {
    s.check = check;
    s
}

fn raw(send: &[u8], replies: usize) -> Step {
    Step {
        send: send.to_vec(),
        replies,
        check: Check::Exact,
        sleep_ms: 0,
    }
}

fn case(name: &'static str, steps: Vec<Step>) -> Case {
    let mut all = vec![c("FLUSHALL")];
    all.extend(steps);
    Case {
        name,
        steps: all,
        closes: false,
    }
}

/// A case that ends with the server closing the connection (a protocol error, QUIT).
fn closing(name: &'static str, steps: Vec<Step>) -> Case {
    Case {
        closes: true,
        ..case(name, steps)
    }
}

/// The commands of `lines`, pipelined in one write.
fn pipelined(lines: &[&str]) -> Step {
    let mut send = Vec::new();
    for l in lines {
        send.extend(c(l).send);
    }
    raw(&send, lines.len())
}

/// The strings case: deterministic, exact; also fed split at every byte.
pub fn strings() -> Case {
    case(
        "strings",
        vec![pipelined(&[
            "PING",
            "ping hello",
            "PING a b",
            "ECHO hi",
            "ECHO",
            "SET k v",
            "GET k",
            "get missing",
            "GET",
            "SET k v2 NX",
            "SET k v3 XX",
            "SET k2 v XX",
            "SET k2 v NX",
            "SET k v4 GET",
            "SET new v GET",
            "SET k v NX XX",
            "SET k v BOGUS",
            "SET k v EX",
            "SET k v EX 0",
            "SET k v EX -5",
            "SET k v PX x",
            "SET k v EX 9999999999999999",
            "SET k v EX 10 PX 10",
            "SET k v EX 10 KEEPTTL",
            "SET k v KEEPTTL",
            "MSET a 1 b 2 c 3",
            "MSET a",
            "MSET a 1 b",
            "MGET a b c nope",
            "DEL a b nope",
            "DEL nope",
            "DEL",
            "EXISTS a c c nope",
            "TYPE c",
            "TYPE nope",
            "INCR n",
            "INCR n",
            "INCRBY n 10",
            "INCRBY n x",
            "INCRBY n 007",
            "DECR n",
            "DECRBY n 5",
            "DECRBY n -9223372036854775808",
            "SET big 9223372036854775807",
            "INCR big",
            "SET small -9223372036854775808",
            "DECR small",
            "INCR k",
            "SET sp 12x",
            "INCR sp",
            "APPEND n xyz",
            "APPEND fresh abc",
            "STRLEN n",
            "STRLEN nope",
            "GET n",
            "SELECT 0",
            "SELECT 16",
            "SELECT -1",
            "SELECT x",
            "DBSIZE",
            "FLUSHDB x",
            "FLUSHALL ASYNC x",
            "FLUSHDB SYNC",
            "DBSIZE",
            "FOO a b",
            "foo",
            "CLIENT GETNAME",
            "CLIENT SETNAME conn1",
            "CLIENT GETNAME",
            "CLIENT SETNAME",
            "CLIENT NOPE",
            "CLIENT",
            "COMMAND NOPE",
            "COMMAND COUNT x",
            "HELLO 2 NOPE",
            "HELLO x",
        ])],
    )
}

/// The collections case: lists, hashes, sets, sorted sets; exact where Redis's order is
/// defined (listpack hashes, intsets, sorted sets).
pub fn collections() -> Case {
    case(
        "collections",
        vec![
            pipelined(&[
                "LPUSH l a b c",
                "RPUSH l d e",
                "LRANGE l 0 -1",
                "LRANGE l 1 2",
                "LRANGE l -2 100",
                "LRANGE l 5 1",
                "LRANGE l x 1",
                "LRANGE nope 0 -1",
                "LLEN l",
                "LLEN nope",
                "LINDEX l 0",
                "LINDEX l -1",
                "LINDEX l 99",
                "LINDEX l x",
                "LPOP l",
                "RPOP l",
                "LPOP l 2",
                "RPOP l 0",
                "LPOP l x",
                "LPOP l -1",
                "LPOP l 1 2",
                "LPOP nope",
                "LPOP nope 2",
                "RPOP l 10",
                "EXISTS l",
                "LPUSH",
                "SET s x",
                "LPUSH s a",
                "LRANGE s 0 1",
                "SADD s a",
                "HSET s a b",
                "ZADD s 1 a",
                "HSET h f1 v1 f2 v2 f3 v3",
                "HSET h f2 new",
                "HSET h f4",
                "HGET h f2",
                "HGET h nope",
                "HGET nope f",
                "HGETALL h",
                "HDEL h f1 nope",
                "HGETALL h",
                "HDEL h f2 f3",
                "HGETALL nope",
                "TYPE h",
                "SADD ints 5 3 9 1 3",
                "SMEMBERS ints",
                "SCARD ints",
                "SISMEMBER ints 3",
                "SISMEMBER ints 4",
                "SREM ints 3 4",
                "SMEMBERS ints",
                "SMEMBERS nope",
                "SCARD nope",
                "SADD one x",
                "SPOP one",
                "SPOP one",
                "SPOP nope 3",
                "SPOP ints x",
                "SPOP ints -1",
                "SPOP ints 1 2",
                "SPOP ints 0",
                "ZADD z 1.5 a 0.1 b 1e20 c inf d -inf e 3 f 1e-5 g",
                "ZADD z 123456789012345678 h 0.3333333333333333 i 1e17 j -0 k",
                "ZRANGE z 0 -1 WITHSCORES",
                "ZRANGE z 0 2",
                "ZRANGE z -3 -1 REV",
                "ZRANGE z 1 3 REV",
                "ZRANGE z -2 -1",
                "ZRANGE z 0 0 REV",
                "ZRANGE z -1 -1 REV WITHSCORES",
                "ZRANGE z 0 -1 REV WITHSCORES",
                "ZRANGE z 1 3 BYSCORE WITHSCORES",
                "ZRANGE z (1.5 +inf BYSCORE",
                "ZRANGE z -inf +inf BYSCORE LIMIT 2 3",
                "ZRANGE z +inf 1 BYSCORE REV",
                "ZRANGE z x 1 BYSCORE",
                "ZRANGE z 0 -1 LIMIT 0 1",
                "ZRANGE z 0 -1 BOGUS",
                "ZRANGE z x 1",
                "ZRANGE nope 0 -1",
                "ZSCORE z a",
                "ZSCORE z b",
                "ZSCORE z c",
                "ZSCORE z d",
                "ZSCORE z k",
                "ZSCORE z nope",
                "ZCARD z",
                "ZCARD nope",
                "ZADD z",
                "ZADD z 1",
                "ZADD z x a",
                "ZADD z NX XX 1 a",
                "ZADD z GT LT 1 a",
                "ZADD z NX GT 1 a",
                "ZADD z INCR 1 a 2 b",
                "ZADD z INCR 2 a",
                "ZADD z XX INCR 1 nope",
                "ZADD z NX 9 a 9 new",
                "ZADD z XX CH 7 a 7 other",
                "ZADD z GT CH 1 a 8 f",
                "ZADD z LT 0 a",
                "ZADD z INCR -inf d",
                "ZSCORE z a",
                "ZPOPMIN z",
                "ZPOPMIN z 2",
                "ZPOPMIN z 0",
                "ZPOPMIN z x",
                "ZPOPMIN z 1 2",
                "ZPOPMIN nope",
                "ZPOPMIN nope 2",
                "ZPOPMIN z 100",
                "EXISTS z",
            ]),
            check(c("SADD words apple pear fig"), Check::Exact),
            check(c("SMEMBERS words"), Check::Unordered),
            check(c("SPOP words 5"), Check::Unordered),
            c("EXISTS words"),
        ],
    )
}

/// Type errors, numbers at their bounds, large collections.
pub fn more() -> Case {
    let fields: Vec<String> = (0..130).map(|i| format!("f{i} v{i}")).collect();
    let ints: Vec<String> = (0..520).map(|i| (i * 7 % 1000).to_string()).collect();
    let long = "v".repeat(65);
    let mut steps = Vec::new();
    steps.push(pipelined(&[
        "LPUSH l a",
        "SADD s 1",
        "HSET h f v",
        "ZADD z 1 m",
        "SET str v",
        "TYPE l",
        "TYPE s",
        "TYPE h",
        "TYPE z",
        "MGET l s h z str",
        "SET l x GET",
        "GET l",
        "APPEND l x",
        "STRLEN l",
        "INCR l",
        "DECRBY l 1",
        "LLEN s",
        "LINDEX s 0",
        "LPOP s",
        "RPUSH s a",
        "SADD l a",
        "SREM l a",
        "SISMEMBER l a",
        "SMEMBERS l",
        "SCARD l",
        "SPOP l",
        "HSET l a b",
        "HGET l a",
        "HGETALL l",
        "HDEL l a",
        "ZADD l 1 a",
        "ZSCORE l a",
        "ZCARD l",
        "ZRANGE l 0 1",
        "ZPOPMIN l",
        "DEL l l s",
        "EXISTS h h z",
        "SET n 5",
        "INCRBY n 9223372036854775807",
        "INCRBY n 9223372036854775802",
        "GET n",
        "DECRBY n x",
        "SET sp \x20",
        "INCR sp",
        "ZADD z 100 a 1e15 b 2.5e-7 c 1e400 d",
        "ZADD z nan d",
        "ZADD z 1e-400 d",
        "ZADD q 0x10 a INF b Infinity c 1E5 e 5e-324 f -0x1.8p1 g",
        "ZADD q 1_0 h",
        "ZADD q 0x h",
        "ZRANGE q 0 -1 WITHSCORES",
        "ZRANGE q (inf +inf BYSCORE",
        "ZRANGE q [1 2 BYSCORE",
        "ZRANGE q 1e400 2 BYSCORE",
        "ZRANGE q 0x1 0x10 BYSCORE",
        "ZRANGE q nan 2 BYSCORE",
        "ZADD lex 0 a 0 b 0 c 0 d 0 e",
        "ZRANGE lex [b (d BYLEX",
        "ZRANGE lex - + BYLEX LIMIT 1 2",
        "ZRANGE lex + [c BYLEX REV",
        "ZRANGE lex (c + BYLEX",
        "ZRANGE lex b c BYLEX",
        "ZRANGE lex -x + BYLEX",
        "CONFIG GET save",
        "CONFIG GET maxmemory",
        "CONFIG GET APPENDONLY",
        "CONFIG GET nosuch",
        "CONFIG GET",
        "CONFIG NOPE",
        "CONFIG",
        "ZADD z 100 a 1e15 b 2.5e-7 c -1.5e-300 d +5 e .5 f 5. g",
        "ZRANGE z 0 -1 WITHSCORES",
        "ZRANGE z (x 1 BYSCORE",
        "ZRANGE z (0.5 (100 BYSCORE WITHSCORES",
        "ZRANGE z 100 (0.5 BYSCORE REV LIMIT 1 2",
        "ZRANGE z 0 -1 BYLEX WITHSCORES",
        "ZRANGE z 0 1 WITHSCORES REV REV",
        "ZADD z CH INCR 1 a",
        "ZADD z LT CH 0 a 200 b",
        "ZADD z GT 1 a",
        "ZSCORE z a",
        "EXPIREAT str -5",
        "EXISTS str",
        "SET str v",
        "PEXPIRE str 9223372036854775807",
        "PEXPIREAT str 9223372036854775807",
    ]));
    // Seconds to a deadline in ms: a second's edge may fall between the two servers' runs.
    steps.push(check(c("TTL str"), Check::Near(1)));
    steps.push(pipelined(&[
        "SELECT 0 1",
        "HELLO 1",
        "HELLO 4",
        "LRANGE h 0 1",
        "LRANGE nope 9223372036854775807 -9223372036854775808",
        "CLIENT SETNAME a\x01",
        "DEL s h z",
        "FLUSHALL",
        "DBSIZE",
    ]));
    steps.push(c(&format!("HSET big {}", fields.join(" "))));
    steps.push(check(c("HGETALL big"), Check::Unordered));
    steps.push(c(&format!("HSET long a {long} b x")));
    steps.push(check(c("HGETALL long"), Check::Unordered));
    steps.push(c(&format!("SADD many {}", ints.join(" "))));
    steps.push(check(c("SMEMBERS many"), Check::Unordered));
    steps.push(c("SADD small 3 -1 20 7"));
    steps.push(c("SPOP small 4"));
    steps.push(c("SADD mixed 3 1 x"));
    steps.push(check(c("SMEMBERS mixed"), Check::Unordered));
    steps.push(c("SREM mixed x"));
    steps.push(check(c("SMEMBERS mixed"), Check::Unordered));
    case("more", steps)
}

/// TTLs: relative and absolute, NX XX GT LT, and keys that expire.
pub fn expiry() -> Case {
    let far = "4102444800"; // 2100-01-01, seconds
    let mut steps = vec![pipelined(&[
        "SET k v EX 100",
        "TTL k",
        "TTL nope",
        "SET p v",
        "TTL p",
        "PTTL p",
        "PERSIST p",
        "PERSIST k",
        "TTL k",
        "EXPIRE p 100 XX",
        "EXPIRE p 100 NX",
        "EXPIRE p 200 NX",
        "EXPIRE p 50 GT",
        "EXPIRE p 50 LT",
        "TTL p",
        "EXPIRE p 500 GT",
        "TTL p",
        "EXPIRE p 10 NX XX",
        "EXPIRE p 10 GT LT",
        "EXPIRE p 10 BOGUS",
        "EXPIRE p x",
        "EXPIRE p 9223372036854775807",
        "EXPIRE nope 10",
        "PEXPIRE p 300000",
        "TTL p",
        "EXPIREAT p 1",
        "EXISTS p",
        "SET q v",
        "PEXPIREAT q 1",
        "GET q",
        "SET r v KEEPTTL",
        "EXPIRE r 100 LT",
        "TTL r",
        "SET r v2 KEEPTTL",
        "TTL r",
        "SET r v3",
        "TTL r",
        "INCR i",
        "EXPIRE i 100",
        "INCR i",
        "TTL i",
        "APPEND i 0",
        "TTL i",
        "SET m 1 EX 100",
        "MSET m 2",
        "TTL m",
        "SET m 1 EX 100",
        "SET m 2",
        "TTL m",
        "LPUSH ml a",
        "EXPIRE ml 100",
        "RPUSH ml b",
        "TTL ml",
        "SET nk v EX 10 GET",
        "SET nk w NX GET",
        "SET nk w XX GET",
        "GET nk",
        "TTL nk",
        "DEL nk",
        "TTL nk",
        "SET x v PXAT 1 GET",
        "SET x v EXAT 0",
    ])];
    steps.push(c(&format!("EXPIREAT k {far}")));
    // Seconds rounded from ms: the two clocks may straddle a half second.
    steps.push(check(c("TTL k"), Check::Near(1)));
    steps.push(c(&format!("SET e v EXAT {far}")));
    steps.push(check(c("TTL e"), Check::Near(1)));
    steps.push(c("SET e v EXAT 1"));
    steps.push(c("GET e"));
    steps.push(check(c("PEXPIRE k 100000"), Check::Exact));
    steps.push(check(c("PTTL k"), Check::Near(200)));
    steps.push(Step {
        sleep_ms: 30,
        ..pipelined(&[
            "SET gone v PX 1",
            "SET gone2 v PX 5",
            "LPUSH gl a",
            "PEXPIRE gl 2",
        ])
    });
    steps.push(pipelined(&[
        "GET gone",
        "EXISTS gone2",
        "TTL gone",
        "LLEN gl",
        "TYPE gl",
        "SET gone v NX",
    ]));
    steps.push(pipelined(&[
        "FLUSHALL",
        "SET a 1",
        "SET b 2",
        "LPUSH c x",
        "DBSIZE",
    ]));
    steps.push(check(c("INFO"), Check::Info));
    steps.push(check(c("INFO keyspace"), Check::Info));
    steps.push(check(c("INFO server"), Check::Info));
    steps.push(c("INFO nosuchsection"));
    Case {
        name: "expiry",
        ..case("", steps)
    }
}

/// Inline commands with Redis's quoting, and blank lines.
pub fn inline() -> Case {
    case(
        "inline",
        vec![
            raw(b"PING\r\n", 1),
            raw(b"\r\n\n  \r\nSET \"a b\" 'c d'\nGET \"a b\"\r\n", 2),
            raw(b"SET e \"\\x41\\n\\t\\\\\\\"\\q\"\r\nGET e\r\n", 2),
            raw(b"SET s 'it\\'s'\r\nGET s\r\n", 2),
            raw(b"SET x\"y z\" w\r\nGET xy\r\n", 2),
            raw(b"ECHO \"\\x4g\"\r\n", 1),
            raw(b"   get    e   \r\n", 1),
            raw(b"*0\r\n*-1\r\nPING\r\n", 1),
        ],
    )
}

/// A protocol error closes the connection after the replies before it.
fn protocol_error(name: &'static str, send: &[u8], before: usize) -> Case {
    let mut steps = vec![c("PING")];
    steps.push(raw(send, before + 1));
    closing(name, steps)
}

/// Every case, in order.
pub fn cases() -> Vec<Case> {
    let mut long_args = vec![b"NOSUCH".to_vec(), vec![b'a'; 100], vec![b'b'; 100]];
    long_args.push(b"c".to_vec());
    let refs: Vec<&[u8]> = long_args.iter().map(Vec::as_slice).collect();
    // Over the 64 KiB bound by less than one of Redis's 16 KiB reads: Redis has read it all
    // when it refuses it, so it closes with a FIN (not a reset that could drop its reply).
    let big = vec![b'x'; 64 * 1024 + 100];
    let mut too_big_inline = b"SET k ".to_vec();
    too_big_inline.extend_from_slice(&big);
    let mut too_big_count = b"*".to_vec();
    too_big_count.extend_from_slice(&big);
    let mut too_big_bulk = b"*1\r\n$".to_vec();
    too_big_bulk.extend_from_slice(&big);
    vec![
        strings(),
        collections(),
        more(),
        expiry(),
        inline(),
        case(
            "protocol",
            vec![
                raw(b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n", 2),
                raw(b"*1\rX$4\r\nPING\r\n*-5\r\n*1\r\n$0\r\n\r\n", 2),
                raw(b" *1\r\nECHO \"\"\r\nECHO\ta\r\n*1\r\n$4\r\nPI\0G\r\n", 4),
                raw(b"*2\r\n$4\r\nECHO\r\n$3\r\na\0b\r\n", 1),
                check(c("HELLO 2 AUTH default x"), Check::NoIds),
                c("HELLO 2 AUTH foo x"),
                c("HELLO 2 AUTH default"),
                c("HELLO 2 SETNAME"),
            ],
        ),
        protocol_error("zero-led count", b"*01\r\n", 0),
        protocol_error("plus count", b"*+1\r\n", 0),
        protocol_error("minus zero bulk", b"*1\r\n$-0\r\n", 0),
        case(
            "long unknown",
            vec![
                raw(&encode(&refs), 1),
                raw(&encode(&[b"no\r\nsuch", b"a\r\nb", b"x\0y"]), 1),
                raw(&encode(&[b"EXPIRE", b"k", b"1", b"b\r\nd"]), 1),
            ],
        ),
        case(
            "ids",
            vec![
                check(c("CLIENT ID"), Check::NoIds),
                check(c("HELLO"), Check::NoIds),
                check(c("HELLO 2 SETNAME named"), Check::NoIds),
                c("CLIENT GETNAME"),
            ],
        ),
        closing("quit with args", vec![c("QUIT now")]),
        closing(
            "quit",
            vec![Step {
                replies: 2,
                ..pipelined(&["SET q 1", "QUIT", "GET q"])
            }],
        ),
        protocol_error("unbalanced", b"SET a 1\r\nGET \"a\r\nPING\r\n", 1),
        protocol_error("unbalanced single", b"GET 'a\r\n", 0),
        protocol_error("quote then letter", b"GET \"a\"b\r\n", 0),
        protocol_error("expected dollar", b"*2\r\n$3\r\nGET\r\n:1\r\n", 0),
        protocol_error("expected dollar CR", b"*1\r\n\r\n", 0),
        protocol_error("bad count", b"*x\r\n", 0),
        protocol_error("huge count", b"*2147483648\r\n", 0),
        protocol_error("bad bulk", b"*1\r\n$x\r\n", 0),
        protocol_error("negative bulk", b"*1\r\n$-1\r\n", 0),
        protocol_error("huge bulk", b"*1\r\n$536870913\r\n", 0),
        protocol_error("too big inline", &too_big_inline, 0),
        protocol_error("too big mbulk count", &too_big_count, 0),
        protocol_error("too big bulk count", &too_big_bulk, 0),
    ]
}

/// The length of the RESP2 reply at the start of `buf`, if it is whole.
pub fn reply_len(buf: &[u8]) -> Option<usize> {
    let cr = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..cr]).ok()?;
    let after = cr + 2;
    match buf[0] {
        b'+' | b'-' | b':' => Some(after),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            let mut at = after;
            for _ in 0..n.max(0) {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// `buf` split into whole replies, and what is left.
pub fn split_replies(mut buf: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut v = Vec::new();
    while let Some(n) = reply_len(buf) {
        v.push(&buf[..n]);
        buf = &buf[n..];
    }
    (v, buf)
}

/// The elements of an array reply.
fn elements(reply: &[u8]) -> Vec<&[u8]> {
    let cr = reply.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    split_replies(&reply[cr + 2..]).0
}

/// An INFO reply's lines.
fn info_lines(reply: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(reply);
    s.lines()
        .skip(1)
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

fn mask_ints(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .split("\r\n")
        .map(|l| if l.starts_with(':') { ":#" } else { l })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Whether our reply `ours` matches Redis's `theirs` under `check`; Err says how not.
pub fn compare(check: Check, ours: &[u8], theirs: &[u8]) -> Result<(), String> {
    let same = match check {
        Check::Exact => ours == theirs,
        Check::Unordered => {
            let (mut a, mut b) = (elements(ours), elements(theirs));
            a.sort();
            b.sort();
            ours.split(|&b| b == b'\n').next() == theirs.split(|&b| b == b'\n').next() && a == b
        }
        Check::Info => {
            let theirs = info_lines(theirs);
            info_lines(ours).iter().all(|l| theirs.contains(l))
        }
        Check::NoIds => mask_ints(ours) == mask_ints(theirs),
        Check::Near(tol) => {
            let n = |r: &[u8]| -> Option<i64> {
                std::str::from_utf8(r.strip_prefix(b":")?)
                    .ok()?
                    .trim_end()
                    .parse()
                    .ok()
            };
            matches!((n(ours), n(theirs)), (Some(a), Some(b)) if (a - b).abs() <= tol)
        }
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "{check:?}: ours {:?}, Redis's {:?}",
            String::from_utf8_lossy(ours),
            String::from_utf8_lossy(theirs)
        ))
    }
}

/// Each step's replies from the server at `addr`, the case run on one connection.
pub fn run_tcp(addr: SocketAddr, case: &Case) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(addr).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut all = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let last = i + 1 == case.steps.len();
        // The server may close before it has read it all (a protocol error).
        let _ = s.write_all(&step.send);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            if !(last && case.closes) && split_replies(&buf).0.len() >= step.replies {
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{}: step {i}: reading the server: {e}", case.name),
            }
        }
        all.push(buf);
        std::thread::sleep(Duration::from_millis(step.sleep_ms));
    }
    all
}

/// Every difference between our replies to `case`'s steps and Redis's.
pub fn compare_case(case: &Case, ours: &[Vec<u8>], theirs: &[Vec<u8>]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, (step, (o, t))) in case.steps.iter().zip(ours.iter().zip(theirs)).enumerate() {
        let (o, o_rest) = split_replies(o);
        let (t, t_rest) = split_replies(t);
        if o.len() != t.len() || !o_rest.is_empty() || !t_rest.is_empty() {
            bad.push(format!(
                "{} step {i}: {} replies and {:?} left, Redis {} and {:?}",
                case.name,
                o.len(),
                String::from_utf8_lossy(o_rest),
                t.len(),
                String::from_utf8_lossy(t_rest)
            ));
            continue;
        }
        for (j, (o, t)) in o.iter().zip(&t).enumerate() {
            if let Err(e) = compare(step.check, o, t) {
                bad.push(format!("{} step {i} reply {j}: {e}", case.name));
            }
        }
    }
    bad
}

/// A RESP2 client: requests out, whole replies back as their bytes.
pub struct Client {
    pub r: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.r.get_mut().write_all(&encode(&refs))
    }

    /// One whole reply, as its bytes.
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let n: i64 = line[1..].trim_end().parse().unwrap_or(0);
        match line.as_bytes()[0] {
            b'$' if n >= 0 => {
                let mut body = vec![0; n as usize + 2];
                self.r.read_exact(&mut body)?;
                line += &String::from_utf8_lossy(&body);
            }
            b'*' => {
                for _ in 0..n.max(0) {
                    line += &self.reply()?;
                }
            }
            _ => {}
        }
        Ok(line)
    }

    pub fn call(&mut self, args: &[&str]) -> String {
        self.send(args).unwrap();
        self.reply().unwrap()
    }

    /// The server closed the connection (what it sent before is read and returned).
    pub fn closed(&mut self) -> Option<Vec<u8>> {
        let mut rest = Vec::new();
        self.r.read_to_end(&mut rest).ok().map(|_| rest)
    }
}

/// A real redis-server of this test, on a free port of its own, ended by its PID.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
