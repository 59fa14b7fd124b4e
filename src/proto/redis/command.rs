//! The commands: each runs on the keyspace and appends its reply, Redis 7.0's byte for
//! byte (t_string.c, t_list.c, t_set.c, t_hash.c, t_zset.c, expire.c, db.c, server.c).
//! A write command that changed the keyspace journals its record while it holds its
//! stripes' locks, relative times made absolute as Redis propagates them (`SET k v EX 10`
//! as `SET k v PXAT <ms>`, `EXPIRE` as `PEXPIREAT`, `SPOP` as `SREM`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Env;
use super::keyspace::{
    ELEMENT_COST, HASH_SMALL_ENTRIES, HASH_SMALL_VALUE, Hash, INTSET_ENTRIES, Locked, Score, Set,
    Value, Zset,
};
use super::resp::string2ll;
use crate::proto::digits;

/// What running one command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// The journal position after the record it appended, if it appended one.
    pub lsn: Option<u64>,
    /// QUIT: close once the reply is sent.
    pub close: bool,
}

/// A connection's own state: its CLIENT ID and CLIENT SETNAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: u64,
    /// None until named (no allocation for an unnamed connection).
    pub name: Option<Box<[u8]>>,
}

/// Client ids, from 1 as Redis's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Client {
    fn default() -> Client {
        Client {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
        }
    }
}

/// The version INFO and HELLO report: redis-cli and redis-benchmark read it.
pub const VERSION: &str = "7.0.15";

const WRONGTYPE: &[u8] = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
const NOT_INT: &str = "value is not an integer or out of range";
const NOT_FLOAT: &str = "value is not a valid float";
const SYNTAX: &str = "syntax error";
const POSITIVE: &str = "value is out of range, must be positive";

/// One command of the table: Redis's name, arity (negative: at least), and whether it may
/// grow memory (Redis's `denyoom` flag: refused over maxmemory).
struct Cmd {
    name: &'static str,
    arity: i32,
    denyoom: bool,
    run: fn(&mut Cx<'_, '_>, &[&[u8]]),
}

const fn cmd(name: &'static str, arity: i32, denyoom: bool, run: fn(&mut Cx, &[&[u8]])) -> Cmd {
    Cmd {
        name,
        arity,
        denyoom,
        run,
    }
}

/// The commands, as server.c's table has them.
static COMMANDS: &[Cmd] = &[
    cmd("get", 2, false, get),
    cmd("set", -3, true, set),
    cmd("ping", -1, false, ping),
    cmd("echo", 2, false, echo),
    cmd("quit", -1, false, quit),
    cmd("mget", -2, false, mget),
    cmd("mset", -3, true, mset),
    cmd("del", -2, false, del),
    cmd("exists", -2, false, exists),
    cmd("type", 2, false, type_),
    cmd("expire", -3, false, expire),
    cmd("pexpire", -3, false, expire),
    cmd("expireat", -3, false, expire),
    cmd("pexpireat", -3, false, expire),
    cmd("ttl", 2, false, ttl),
    cmd("pttl", 2, false, ttl),
    cmd("persist", 2, false, persist),
    cmd("incr", 2, true, incr),
    cmd("decr", 2, true, incr),
    cmd("incrby", 3, true, incr),
    cmd("decrby", 3, true, incr),
    cmd("append", 3, true, append),
    cmd("strlen", 2, false, strlen),
    cmd("lpush", -3, true, push),
    cmd("rpush", -3, true, push),
    cmd("lpop", -2, false, pop),
    cmd("rpop", -2, false, pop),
    cmd("llen", 2, false, llen),
    cmd("lindex", 3, false, lindex),
    cmd("lrange", 4, false, lrange),
    cmd("sadd", -3, true, sadd),
    cmd("srem", -3, false, srem),
    cmd("sismember", 3, false, sismember),
    cmd("smembers", 2, false, smembers),
    cmd("scard", 2, false, scard),
    cmd("spop", -2, false, spop),
    cmd("hset", -4, true, hset),
    cmd("hget", 3, false, hget),
    cmd("hgetall", 2, false, hgetall),
    cmd("hdel", -3, false, hdel),
    cmd("zadd", -4, true, zadd),
    cmd("zpopmin", -2, false, zpopmin),
    cmd("zrange", -4, false, zrange),
    cmd("zscore", 3, false, zscore),
    cmd("zcard", 2, false, zcard),
    cmd("dbsize", 1, false, dbsize),
    cmd("flushall", -1, false, flush),
    cmd("flushdb", -1, false, flush),
    cmd("select", 2, false, select),
    cmd("command", -1, false, command),
    cmd("client", -2, false, client),
    cmd("hello", -1, false, hello),
    cmd("info", -1, false, info),
    cmd("config", -2, false, config),
];

/// Subcommands: (container, name, arity).
static SUBCOMMANDS: &[(&str, &str, i32)] = &[
    ("command", "count", 2),
    ("command", "docs", -2),
    ("client", "setname", 3),
    ("client", "getname", 2),
    ("client", "id", 2),
    ("client", "setinfo", 4),
    ("config", "get", -3),
];

/// What a command runs with.
struct Cx<'a, 'e> {
    env: &'a Env<'e>,
    client: &'a mut Client,
    out: &'a mut Vec<u8>,
    /// Not a replay: journal, and refuse over maxmemory.
    live: bool,
    run: Run,
}

fn is(a: &[u8], name: &str) -> bool {
    a.eq_ignore_ascii_case(name.as_bytes())
}

/// Runs the command `args` (name first, never empty), appending its reply to `out`;
/// `live` is false on replay.
pub fn run(
    args: &[&[u8]],
    env: &Env<'_>,
    client: &mut Client,
    live: bool,
    out: &mut Vec<u8>,
) -> Run {
    let mut cx = Cx {
        env,
        client,
        out,
        live,
        run: Run::default(),
    };
    let Some(c) = COMMANDS.iter().find(|c| is(args[0], c.name)) else {
        unknown(&mut cx, args);
        return cx.run;
    };
    // A container's subcommand: its own arity, and its own name in the arity error.
    let sub = args.get(1).and_then(|s| {
        SUBCOMMANDS
            .iter()
            .find(|(cont, name, _)| *cont == c.name && is(s, name))
    });
    let arity = sub.map_or(c.arity, |s| s.2);
    let n = args.len() as i32;
    if (arity > 0 && n != arity) || n < -arity {
        match sub {
            Some((_, s, _)) => wrong_args(cx.out, &format!("{}|{s}", c.name)),
            None => wrong_args(cx.out, c.name),
        }
        return cx.run;
    }
    if live && c.denyoom && env.keyspace.over_maxmemory() {
        cx.out
            .extend_from_slice(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        return cx.run;
    }
    (c.run)(&mut cx, args);
    cx.run
}

/// An argument as C's `%s` prints it: up to its first NUL.
fn cstr(a: &[u8]) -> &[u8] {
    &a[..a.iter().position(|&b| b == 0).unwrap_or(a.len())]
}

/// `-ERR <parts>\r\n` of user bytes: CR and LF become spaces, as Redis's
/// addReplyErrorFormat does.
fn err_parts(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(b"-ERR ");
    for p in parts {
        out.extend(
            p.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    }
    out.extend_from_slice(b"\r\n");
}

fn unknown(cx: &mut Cx<'_, '_>, args: &[&[u8]]) {
    let name = cstr(args[0]);
    let mut s = Vec::new();
    for a in &args[1..] {
        if s.len() >= 128 {
            break;
        }
        let a = cstr(a);
        s.push(b'\'');
        s.extend_from_slice(&a[..a.len().min(128 - s.len() + 1)]);
        s.extend_from_slice(b"' ");
    }
    err_parts(
        cx.out,
        &[
            b"unknown command '",
            &name[..name.len().min(128)],
            b"', with args beginning with: ",
            &s,
        ],
    );
}

fn unknown_sub(out: &mut Vec<u8>, args: &[&[u8]]) {
    let sub = cstr(args[1]);
    let cont = args[0].to_ascii_uppercase();
    err_parts(
        out,
        &[
            b"unknown subcommand '",
            &sub[..sub.len().min(128)],
            b"'. Try ",
            &cont,
            b" HELP.",
        ],
    );
}

fn wrong_args(out: &mut Vec<u8>, name: &str) {
    err(
        out,
        &format!("wrong number of arguments for '{name}' command"),
    );
}

fn err(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(b"-ERR ");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `<kind><n>\r\n`, formatted in place (no allocation).
fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    digits::push_signed(out, n);
    out.extend_from_slice(b"\r\n");
}

fn int(out: &mut Vec<u8>, n: i64) {
    header(out, b':', n);
}

fn array(out: &mut Vec<u8>, n: usize) {
    header(out, b'*', n as i64);
}

fn bulk(out: &mut Vec<u8>, v: &[u8]) {
    header(out, b'$', v.len() as i64);
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

fn double(out: &mut Vec<u8>, d: f64) {
    bulk(out, fmt_double(d).as_bytes());
}

/// A double as Redis 7.0 replies it in RESP2: C's `%.17g` (`inf`, `-inf`).
pub fn fmt_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.into();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // %g: the exponent after rounding to 17 digits picks the style.
    let sci = format!("{d:.16e}");
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an exponent");
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if !(-4..17).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant), exp.abs())
    } else {
        trim(&format!("{d:.*}", (16 - exp) as usize))
    }
}

/// C's strtod over the whole of `s`: decimal (Rust's parser reads the same forms, `inf`
/// and `nan` too), or hexadecimal (`0x1.8p3`).
fn strtod(s: &str) -> Option<f64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) else {
        return s.parse().ok();
    };
    let (digits, exp) = match hex.find(['p', 'P']) {
        Some(i) => (&hex[..i], hex[i + 1..].parse::<i32>().ok()?),
        None => (hex, 0),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut m = 0.0f64;
    for c in int.chars().chain(frac.chars()) {
        m = m * 16.0 + f64::from(c.to_digit(16)?);
    }
    let e = exp.checked_sub(4 * frac.len() as i32)?;
    let d = m * 2f64.powi(e);
    Some(if neg { -d } else { d })
}

/// A double argument as Redis reads it (strtod, the whole argument, no NaN, no overflow or
/// underflow to infinity or zero).
fn parse_double(a: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(a).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let d = strtod(s)?;
    let body = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
    if d.is_nan() || (d.is_infinite() && body != "inf" && body != "infinity") {
        return None;
    }
    let mantissa = body.split(['e', 'p']).next().unwrap_or("");
    let mantissa = mantissa.strip_prefix("0x").unwrap_or(mantissa);
    if d == 0.0
        && mantissa
            .bytes()
            .any(|b| b.is_ascii_alphanumeric() && b != b'0')
    {
        return None;
    }
    Some(d)
}

impl<'e> Cx<'_, 'e> {
    fn lock(&self, key: &[u8]) -> Locked<'e> {
        self.env.keyspace.lock_key(key, self.env.now_ms, self.live)
    }

    fn lock_keys(&self, keys: &[&[u8]]) -> Locked<'e> {
        self.env
            .keyspace
            .lock_keys(keys, self.env.now_ms, self.live)
    }

    /// Journals `args` under `l`'s locks.
    fn log(&mut self, l: &mut Locked<'_>, args: &[&[u8]]) {
        l.log(args);
        if l.lsn.is_some() {
            self.run.lsn = l.lsn;
        }
    }

    fn int_arg(&mut self, a: &[u8]) -> Option<i64> {
        let n = string2ll(a);
        if n.is_none() {
            err(self.out, NOT_INT);
        }
        n
    }

    /// A count of LPOP, SPOP, ZPOPMIN.
    fn count_arg(&mut self, a: &[u8]) -> Option<usize> {
        match string2ll(a) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => {
                err(self.out, POSITIVE);
                None
            }
        }
    }
}

fn ping(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    match a.len() {
        1 => cx.out.extend_from_slice(b"+PONG\r\n"),
        2 => bulk(cx.out, a[1]),
        _ => wrong_args(cx.out, "ping"),
    }
}

fn echo(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    bulk(cx.out, a[1]);
}

fn quit(cx: &mut Cx<'_, '_>, _: &[&[u8]]) {
    ok(cx.out);
    cx.run.close = true;
}

fn get(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    match l.get(a[1]).map(|e| &e.value) {
        None => null(cx.out),
        Some(Value::Str(s)) => bulk(cx.out, s),
        Some(_) => cx.out.extend_from_slice(WRONGTYPE),
    }
}

/// An expire argument: EX / PX seconds or ms from now, EXAT / PXAT absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Ex,
    Px,
    Exat,
    Pxat,
}

fn set(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let (key, val) = (a[1], a[2]);
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut exp: Option<(&[u8], Unit)> = None;
    let mut j = 3;
    while j < a.len() {
        let (o, next) = (a[j], a.get(j + 1));
        let unit = [
            ("ex", Unit::Ex),
            ("px", Unit::Px),
            ("exat", Unit::Exat),
            ("pxat", Unit::Pxat),
        ]
        .into_iter()
        .find(|(n, _)| is(o, n))
        .map(|(_, u)| u);
        if is(o, "nx") && !xx {
            nx = true;
        } else if is(o, "xx") && !nx {
            xx = true;
        } else if is(o, "get") {
            get = true;
        } else if is(o, "keepttl") && exp.is_none() {
            keepttl = true;
        } else if let (Some(u), Some(next)) = (unit, next)
            && !keepttl
            && exp.is_none_or(|(_, e)| e == u)
        {
            exp = Some((next, u));
            j += 1;
        } else {
            err(cx.out, SYNTAX);
            return;
        }
        j += 1;
    }
    let mut at = None;
    if let Some((v, unit)) = exp {
        let Some(n) = cx.int_arg(v) else { return };
        let secs = matches!(unit, Unit::Ex | Unit::Exat);
        if n <= 0 || (secs && n > i64::MAX / 1000) {
            err(cx.out, "invalid expire time in 'set' command");
            return;
        }
        let mut ms = if secs { n * 1000 } else { n };
        if matches!(unit, Unit::Ex | Unit::Px) {
            ms = ms.wrapping_add(cx.env.now_ms as i64);
        }
        if ms <= 0 {
            err(cx.out, "invalid expire time in 'set' command");
            return;
        }
        at = Some(ms as u64);
    }
    let mut l = cx.lock(key);
    let (found, old_ttl) = match l.get(key) {
        None => {
            if get {
                null(cx.out);
            }
            (false, None)
        }
        Some(e) => {
            if get {
                match &e.value {
                    Value::Str(s) => bulk(cx.out, s),
                    _ => {
                        cx.out.extend_from_slice(WRONGTYPE);
                        return;
                    }
                }
            }
            (true, e.expire())
        }
    };
    if (nx && found) || (xx && !found) {
        if !get {
            null(cx.out);
        }
        return;
    }
    let ttl = if keepttl { old_ttl } else { at };
    l.insert(key, Value::Str(val.to_vec()), ttl);
    match at {
        Some(ms) => cx.log(
            &mut l,
            &[b"SET", key, val, b"PXAT", digits::text(ms, &mut [0; 20])],
        ),
        None if keepttl => cx.log(&mut l, &[b"SET", key, val, b"KEEPTTL"]),
        None => cx.log(&mut l, &[b"SET", key, val]),
    }
    if !get {
        ok(cx.out);
    }
}

fn mget(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock_keys(&a[1..]);
    array(cx.out, a.len() - 1);
    for k in &a[1..] {
        match l.get(k).map(|e| &e.value) {
            Some(Value::Str(s)) => bulk(cx.out, s),
            _ => null(cx.out),
        }
    }
}

fn mset(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if a.len() % 2 == 0 {
        wrong_args(cx.out, "mset");
        return;
    }
    let keys: Vec<&[u8]> = a[1..].iter().step_by(2).copied().collect();
    let mut l = cx.lock_keys(&keys);
    for kv in a[1..].chunks(2) {
        l.insert(kv[0], Value::Str(kv[1].to_vec()), None);
    }
    cx.log(&mut l, a);
    ok(cx.out);
}

fn del(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock_keys(&a[1..]);
    let n = a[1..].iter().filter(|k| l.remove(k)).count();
    if n > 0 {
        cx.log(&mut l, a);
    }
    int(cx.out, n as i64);
}

fn exists(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock_keys(&a[1..]);
    let n = a[1..].iter().filter(|k| l.get(k).is_some()).count();
    int(cx.out, n as i64);
}

fn type_(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let t = match l.get(a[1]).map(|e| &e.value) {
        None => "none",
        Some(Value::Str(_)) => "string",
        Some(Value::List(_)) => "list",
        Some(Value::Hash(_)) => "hash",
        Some(Value::Set(_)) => "set",
        Some(Value::Zset(_)) => "zset",
    };
    cx.out.push(b'+');
    cx.out.extend_from_slice(t.as_bytes());
    cx.out.extend_from_slice(b"\r\n");
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT key time [NX|XX|GT|LT].
fn expire(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let secs = is(a[0], "expire") || is(a[0], "expireat");
    let relative = is(a[0], "expire") || is(a[0], "pexpire");
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        match () {
            _ if is(o, "nx") => nx = true,
            _ if is(o, "xx") => xx = true,
            _ if is(o, "gt") => gt = true,
            _ if is(o, "lt") => lt = true,
            _ => {
                err_parts(cx.out, &[b"Unsupported option ", cstr(o)]);
                return;
            }
        }
    }
    if nx && (xx || gt || lt) {
        err(
            cx.out,
            "NX and XX, GT or LT options at the same time are not compatible",
        );
        return;
    }
    if gt && lt {
        err(
            cx.out,
            "GT and LT options at the same time are not compatible",
        );
        return;
    }
    let Some(mut when) = cx.int_arg(a[2]) else {
        return;
    };
    let base = if relative { cx.env.now_ms as i64 } else { 0 };
    let scaled = if secs {
        when.checked_mul(1000)
    } else {
        Some(when)
    };
    let Some(ms) = scaled.filter(|&ms| ms <= i64::MAX - base) else {
        let name = String::from_utf8_lossy(a[0]).to_lowercase();
        err(cx.out, &format!("invalid expire time in '{name}' command"));
        return;
    };
    when = ms;
    when += base;
    let key = a[1];
    let mut l = cx.lock(key);
    let Some(e) = l.get(key) else {
        int(cx.out, 0);
        return;
    };
    let cur = e.expire().map(|t| t as i64);
    let refused = (nx && cur.is_some())
        || (xx && cur.is_none())
        || (gt && cur.is_none_or(|c| when <= c))
        || (lt && cur.is_some_and(|c| when >= c));
    if refused {
        int(cx.out, 0);
        return;
    }
    // Already past (and not a replay, which keeps the absolute time): the key goes now.
    if when <= cx.env.now_ms as i64 && cx.live {
        l.remove(key);
        cx.log(&mut l, &[b"DEL", key]);
    } else {
        l.set_expire(key, Some(when.max(0) as u64));
        cx.log(&mut l, &[b"PEXPIREAT", key, when.to_string().as_bytes()]);
    }
    int(cx.out, 1);
}

fn ttl(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let ms = is(a[0], "pttl");
    let mut l = cx.lock(a[1]);
    let now = l.now_ms();
    let n = match l.get(a[1]).map(|e| e.expire()) {
        None => -2,
        Some(None) => -1,
        Some(Some(t)) => {
            let left = t.saturating_sub(now) as i64;
            if ms { left } else { (left + 500) / 1000 }
        }
    };
    int(cx.out, n);
}

fn persist(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let had = l.get(a[1]).is_some_and(|e| e.expire().is_some());
    if had {
        l.set_expire(a[1], None);
        cx.log(&mut l, a);
    }
    int(cx.out, i64::from(had));
}

/// INCR, DECR, INCRBY, DECRBY.
fn incr(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let name = a[0];
    let by = if is(name, "incr") {
        1
    } else if is(name, "decr") {
        -1
    } else {
        let Some(n) = cx.int_arg(a[2]) else { return };
        if is(name, "decrby") {
            if n == i64::MIN {
                err(cx.out, "decrement would overflow");
                return;
            }
            -n
        } else {
            n
        }
    };
    let key = a[1];
    let mut l = cx.lock(key);
    let (old, ttl) = match l.get(key) {
        None => (0, None),
        Some(e) => match &e.value {
            Value::Str(s) => match string2ll(s) {
                Some(n) => (n, e.expire()),
                None => {
                    err(cx.out, NOT_INT);
                    return;
                }
            },
            _ => {
                cx.out.extend_from_slice(WRONGTYPE);
                return;
            }
        },
    };
    let Some(new) = old.checked_add(by) else {
        err(cx.out, "increment or decrement would overflow");
        return;
    };
    l.insert(key, Value::Str(new.to_string().into_bytes()), ttl);
    cx.log(&mut l, a);
    int(cx.out, new);
}

fn append(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let key = a[1];
    let max = cx.env.limits.max_bulk_bytes;
    let mut l = cx.lock(key);
    let len = match l.get(key) {
        None => {
            l.insert(key, Value::Str(a[2].to_vec()), None);
            a[2].len()
        }
        Some(e) => match &mut e.value {
            Value::Str(s) => {
                if (s.len() + a[2].len()) as u64 > max {
                    err(
                        cx.out,
                        "string exceeds maximum allowed size (proto-max-bulk-len)",
                    );
                    return;
                }
                s.extend_from_slice(a[2]);
                let n = s.len();
                l.charge(a[2].len() as i64);
                n
            }
            _ => {
                cx.out.extend_from_slice(WRONGTYPE);
                return;
            }
        },
    };
    cx.log(&mut l, a);
    int(cx.out, len as i64);
}

fn strlen(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    match l.get(a[1]).map(|e| &e.value) {
        None => int(cx.out, 0),
        Some(Value::Str(s)) => int(cx.out, s.len() as i64),
        Some(_) => cx.out.extend_from_slice(WRONGTYPE),
    }
}

/// A key's value if it is of the type `$v`: WRONGTYPE (and return) otherwise.
macro_rules! typed {
    ($cx:expr, $e:expr, $v:ident) => {
        match &mut $e.value {
            Value::$v(x) => x,
            _ => {
                $cx.out.extend_from_slice(WRONGTYPE);
                return;
            }
        }
    };
}

/// The live value of `key` in `$l` if of type `$v`; `$none` when the key is missing.
macro_rules! lookup {
    ($cx:expr, $l:expr, $key:expr, $v:ident, $none:expr) => {
        match $l.get($key) {
            None => {
                $none;
                return;
            }
            Some(e) => typed!($cx, e, $v),
        }
    };
}

fn push(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let left = is(a[0], "lpush");
    let key = a[1];
    let mut l = cx.lock(key);
    if l.get(key).is_none() {
        l.insert(key, Value::List(VecDeque::new()), None);
    }
    let list = lookup!(cx, l, key, List, {});
    for v in &a[2..] {
        if left {
            list.push_front(v.to_vec());
        } else {
            list.push_back(v.to_vec());
        }
    }
    let n = list.len();
    l.charge(a[2..].iter().map(|v| v.len() as i64 + ELEMENT_COST).sum());
    cx.log(&mut l, a);
    int(cx.out, n as i64);
}

fn pop(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let left = is(a[0], "lpop");
    if a.len() > 3 {
        wrong_args(cx.out, if left { "lpop" } else { "rpop" });
        return;
    }
    let count = match a.get(2) {
        Some(c) => match cx.count_arg(c) {
            Some(n) => Some(n),
            None => return,
        },
        None => None,
    };
    let key = a[1];
    let mut l = cx.lock(key);
    let list = lookup!(
        cx,
        l,
        key,
        List,
        match count {
            Some(_) => cx.out.extend_from_slice(b"*-1\r\n"),
            None => null(cx.out),
        }
    );
    let n = count.unwrap_or(1).min(list.len());
    if count.is_some() {
        array(cx.out, n);
    }
    let mut freed = 0;
    for _ in 0..n {
        let v = if left {
            list.pop_front()
        } else {
            list.pop_back()
        };
        let v = v.expect("n is at most the length");
        freed += v.len() as i64 + ELEMENT_COST;
        bulk(cx.out, &v);
    }
    l.charge(-freed);
    l.drop_if_empty(key);
    if n > 0 {
        cx.log(&mut l, a);
    }
}

fn llen(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let list = lookup!(cx, l, a[1], List, int(cx.out, 0));
    int(cx.out, list.len() as i64);
}

fn lindex(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let Some(i) = cx.int_arg(a[2]) else { return };
    let mut l = cx.lock(a[1]);
    let list = lookup!(cx, l, a[1], List, null(cx.out));
    let i = if i < 0 { i + list.len() as i64 } else { i };
    match usize::try_from(i).ok().and_then(|i| list.get(i)) {
        Some(v) => bulk(cx.out, v),
        None => null(cx.out),
    }
}

/// Redis's range of `start..=end` (negative from the end) over `len` items.
fn range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut s = if start < 0 { start + len } else { start };
    let mut e = if end < 0 { end + len } else { end };
    s = s.max(0);
    if s > e || s >= len {
        return None;
    }
    e = e.min(len - 1);
    Some((s as usize, e as usize))
}

fn lrange(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let Some(s) = cx.int_arg(a[2]) else { return };
    let Some(e) = cx.int_arg(a[3]) else { return };
    let mut l = cx.lock(a[1]);
    let list = lookup!(cx, l, a[1], List, array(cx.out, 0));
    match range(s, e, list.len()) {
        None => array(cx.out, 0),
        Some((s, e)) => {
            array(cx.out, e - s + 1);
            for v in list.range(s..=e) {
                bulk(cx.out, v);
            }
        }
    }
}

fn sadd(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let key = a[1];
    let mut l = cx.lock(key);
    if l.get(key).is_none() {
        let set = Set {
            members: BTreeSet::new(),
            intset: string2ll(a[2]).is_some(),
        };
        l.insert(key, Value::Set(set), None);
    }
    let set = lookup!(cx, l, key, Set, {});
    let mut added = 0;
    let mut took = 0;
    for m in &a[2..] {
        if set.members.insert(m.to_vec()) {
            added += 1;
            took += m.len() as i64 + ELEMENT_COST;
            if string2ll(m).is_none() {
                set.intset = false;
            }
        }
    }
    if set.members.len() > INTSET_ENTRIES {
        set.intset = false;
    }
    l.charge(took);
    if added > 0 {
        cx.log(&mut l, a);
    }
    int(cx.out, added);
}

fn srem(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let key = a[1];
    let mut l = cx.lock(key);
    let set = lookup!(cx, l, key, Set, int(cx.out, 0));
    let mut n = 0;
    let mut freed = 0;
    for m in &a[2..] {
        if set.members.remove(*m) {
            n += 1;
            freed += m.len() as i64 + ELEMENT_COST;
        }
    }
    l.charge(-freed);
    l.drop_if_empty(key);
    if n > 0 {
        cx.log(&mut l, a);
    }
    int(cx.out, n);
}

fn sismember(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let set = lookup!(cx, l, a[1], Set, int(cx.out, 0));
    int(cx.out, i64::from(set.members.contains(a[2])));
}

/// A set's members in Redis's order: numeric for an intset; else any (a hash table's),
/// here byte order.
fn members(set: &Set) -> Vec<&Vec<u8>> {
    let mut m: Vec<&Vec<u8>> = set.members.iter().collect();
    if set.intset {
        m.sort_by_key(|v| string2ll(v));
    }
    m
}

fn smembers(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let set = lookup!(cx, l, a[1], Set, array(cx.out, 0));
    let m = members(set);
    array(cx.out, m.len());
    for v in m {
        bulk(cx.out, v);
    }
}

fn scard(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let set = lookup!(cx, l, a[1], Set, int(cx.out, 0));
    int(cx.out, set.members.len() as i64);
}

fn spop(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if a.len() > 3 {
        err(cx.out, SYNTAX);
        return;
    }
    let count = match a.get(2) {
        Some(c) => match cx.count_arg(c) {
            Some(n) => Some(n),
            None => return,
        },
        None => None,
    };
    let key = a[1];
    let mut l = cx.lock(key);
    let set = lookup!(
        cx,
        l,
        key,
        Set,
        match count {
            Some(_) => array(cx.out, 0),
            None => null(cx.out),
        }
    );
    let n = count.unwrap_or(1).min(set.members.len());
    let all = n == set.members.len();
    // Redis picks at random; the first are as good (and the same every run).
    let popped: Vec<Vec<u8>> = members(set).into_iter().take(n).cloned().collect();
    for m in &popped {
        set.members.remove(m);
    }
    if count.is_some() {
        array(cx.out, n);
    }
    for m in &popped {
        bulk(cx.out, m);
    }
    l.charge(
        -popped
            .iter()
            .map(|m| m.len() as i64 + ELEMENT_COST)
            .sum::<i64>(),
    );
    l.drop_if_empty(key);
    if all && n > 0 {
        cx.log(&mut l, &[b"DEL", key]);
    } else if n > 0 {
        let mut rec: Vec<&[u8]> = vec![b"SREM", key];
        rec.extend(popped.iter().map(Vec::as_slice));
        cx.log(&mut l, &rec);
    }
}

fn hset(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if a.len() % 2 == 1 {
        wrong_args(cx.out, "hset");
        return;
    }
    let key = a[1];
    let mut l = cx.lock(key);
    if l.get(key).is_none() {
        l.insert(key, Value::Hash(Hash::Small(Vec::new())), None);
    }
    let h = lookup!(cx, l, key, Hash, {});
    if a[2..].iter().any(|x| x.len() > HASH_SMALL_VALUE) {
        to_big(h);
    }
    let (mut added, mut took) = (0, 0);
    for fv in a[2..].chunks(2) {
        let (f, v) = (fv[0], fv[1]);
        let old = match h {
            Hash::Small(pairs) => match pairs.iter_mut().find(|(k, _)| k == f) {
                Some((_, x)) => Some(std::mem::replace(x, v.to_vec())),
                None => {
                    pairs.push((f.to_vec(), v.to_vec()));
                    None
                }
            },
            Hash::Big(m) => m.insert(f.to_vec(), v.to_vec()),
        };
        match old {
            Some(o) => took += v.len() as i64 - o.len() as i64,
            None => {
                added += 1;
                took += (f.len() + v.len()) as i64 + ELEMENT_COST;
            }
        }
    }
    if let Hash::Small(p) = h
        && p.len() > HASH_SMALL_ENTRIES
    {
        to_big(h);
    }
    l.charge(took);
    cx.log(&mut l, a);
    int(cx.out, added);
}

/// A listpack hash grown past its bounds becomes a hash table (unordered), for good.
fn to_big(h: &mut Hash) {
    if let Hash::Small(p) = h {
        *h = Hash::Big(std::mem::take(p).into_iter().collect::<BTreeMap<_, _>>());
    }
}

fn hget(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let h = lookup!(cx, l, a[1], Hash, null(cx.out));
    let v = match h {
        Hash::Small(p) => p.iter().find(|(k, _)| k == a[2]).map(|(_, v)| v),
        Hash::Big(m) => m.get(a[2]),
    };
    match v {
        Some(v) => bulk(cx.out, v),
        None => null(cx.out),
    }
}

fn hgetall(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let h = lookup!(cx, l, a[1], Hash, array(cx.out, 0));
    let pairs: Vec<(&Vec<u8>, &Vec<u8>)> = match h {
        Hash::Small(p) => p.iter().map(|(f, v)| (f, v)).collect(),
        Hash::Big(m) => m.iter().collect(),
    };
    array(cx.out, pairs.len() * 2);
    for (f, v) in pairs {
        bulk(cx.out, f);
        bulk(cx.out, v);
    }
}

fn hdel(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let key = a[1];
    let mut l = cx.lock(key);
    let h = lookup!(cx, l, key, Hash, int(cx.out, 0));
    let (mut n, mut freed) = (0, 0);
    for f in &a[2..] {
        let old = match h {
            Hash::Small(p) => p.iter().position(|(k, _)| k == f).map(|i| p.remove(i).1),
            Hash::Big(m) => m.remove(*f),
        };
        if let Some(v) = old {
            n += 1;
            freed += (f.len() + v.len()) as i64 + ELEMENT_COST;
        }
    }
    l.charge(-freed);
    l.drop_if_empty(key);
    if n > 0 {
        cx.log(&mut l, a);
    }
    int(cx.out, n);
}

fn zadd(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < a.len() {
        let o = a[i];
        match () {
            _ if is(o, "nx") => nx = true,
            _ if is(o, "xx") => xx = true,
            _ if is(o, "gt") => gt = true,
            _ if is(o, "lt") => lt = true,
            _ if is(o, "ch") => ch = true,
            _ if is(o, "incr") => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &a[i..];
    if pairs.is_empty() || pairs.len() % 2 == 1 {
        err(cx.out, SYNTAX);
        return;
    }
    if nx && xx {
        err(
            cx.out,
            "XX and NX options at the same time are not compatible",
        );
        return;
    }
    if (nx && (gt || lt)) || (gt && lt) {
        err(
            cx.out,
            "GT, LT, and/or NX options at the same time are not compatible",
        );
        return;
    }
    if incr && pairs.len() > 2 {
        err(
            cx.out,
            "INCR option supports a single increment-element pair",
        );
        return;
    }
    let mut scores = Vec::with_capacity(pairs.len() / 2);
    for p in pairs.chunks(2) {
        match parse_double(p[0]) {
            // Redis replies a score of -0 as 0.
            Some(d) => scores.push(d + 0.0),
            None => {
                err(cx.out, NOT_FLOAT);
                return;
            }
        }
    }
    let key = a[1];
    let mut l = cx.lock(key);
    match l.get(key) {
        Some(e) => {
            typed!(cx, e, Zset);
        }
        None if xx => {
            if incr {
                null(cx.out);
            } else {
                int(cx.out, 0);
            }
            return;
        }
        None => l.insert(key, Value::Zset(Zset::default()), None),
    }
    let z = lookup!(cx, l, key, Zset, {});
    let (mut added, mut updated, mut processed, mut took) = (0, 0, 0, 0);
    let mut last = 0.0;
    for (p, &score) in pairs.chunks(2).zip(&scores) {
        let m = p[1];
        match z.scores.get(m).copied() {
            Some(cur) => {
                if nx {
                    continue;
                }
                let s = if incr { score + cur } else { score };
                if s.is_nan() {
                    err(cx.out, "resulting score is not a number (NaN)");
                    return;
                }
                if (lt && s >= cur) || (gt && s <= cur) {
                    continue;
                }
                last = s;
                processed += 1;
                if s != cur {
                    z.order.remove(&(Score(cur), m.to_vec()));
                    z.order.insert((Score(s), m.to_vec()));
                    z.scores.insert(m.to_vec(), s);
                    updated += 1;
                }
            }
            None if !xx => {
                z.order.insert((Score(score), m.to_vec()));
                z.scores.insert(m.to_vec(), score);
                added += 1;
                processed += 1;
                last = score;
                took += 2 * (m.len() as i64 + ELEMENT_COST);
            }
            None => {}
        }
    }
    l.charge(took);
    l.drop_if_empty(key);
    if added + updated > 0 {
        cx.log(&mut l, a);
    }
    if incr {
        if processed > 0 {
            double(cx.out, last);
        } else {
            null(cx.out);
        }
    } else {
        int(cx.out, if ch { added + updated } else { added });
    }
}

fn zpopmin(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if a.len() > 3 {
        err(cx.out, SYNTAX);
        return;
    }
    let count = match a.get(2) {
        Some(c) => match cx.count_arg(c) {
            Some(n) => n,
            None => return,
        },
        None => 1,
    };
    let key = a[1];
    let mut l = cx.lock(key);
    let z = lookup!(cx, l, key, Zset, array(cx.out, 0));
    let n = count.min(z.scores.len());
    array(cx.out, n * 2);
    let mut freed = 0;
    for _ in 0..n {
        let (s, m) = z.order.pop_first().expect("n is at most the length");
        z.scores.remove(&m);
        freed += 2 * (m.len() as i64 + ELEMENT_COST);
        bulk(cx.out, &m);
        double(cx.out, s.0);
    }
    l.charge(-freed);
    l.drop_if_empty(key);
    if n > 0 {
        cx.log(&mut l, a);
    }
}

/// A BYSCORE bound: `(` excludes it; `-inf`, `+inf`.
fn score_bound(a: &[u8]) -> Option<(f64, bool)> {
    let (ex, s) = match a.strip_prefix(b"(") {
        Some(s) => (true, s),
        None => (false, a),
    };
    let d = strtod(std::str::from_utf8(s).ok()?)?;
    (!d.is_nan()).then_some((d, ex))
}

/// Whether a (score, member) is in a BYSCORE or BYLEX range.
type InRange<'a> = dyn Fn(f64, &[u8]) -> bool + 'a;

/// A BYLEX bound: `[x` includes x, `(x` excludes it, `-` and `+` are the ends.
#[derive(Debug, Clone, Copy)]
enum Lex<'a> {
    Min,
    Max,
    At(&'a [u8], bool),
}

impl Lex<'_> {
    fn parse(a: &[u8]) -> Option<Lex<'_>> {
        match a.split_first()? {
            (b'-', []) => Some(Lex::Min),
            (b'+', []) => Some(Lex::Max),
            (b'(', rest) => Some(Lex::At(rest, true)),
            (b'[', rest) => Some(Lex::At(rest, false)),
            _ => None,
        }
    }

    /// `m` is past this lower bound.
    fn below(self, m: &[u8]) -> bool {
        match self {
            Lex::Min => true,
            Lex::Max => false,
            Lex::At(b, ex) => {
                if ex {
                    m > b
                } else {
                    m >= b
                }
            }
        }
    }

    /// `m` is before this upper bound.
    fn above(self, m: &[u8]) -> bool {
        match self {
            Lex::Min => false,
            Lex::Max => true,
            Lex::At(b, ex) => {
                if ex {
                    m < b
                } else {
                    m <= b
                }
            }
        }
    }
}

/// ZRANGE key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]. BYLEX
/// walks in score order, as Redis's does when all scores are equal (its only defined use).
fn zrange(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let (mut scores, mut rev, mut byscore, mut bylex) = (false, false, false, false);
    let mut limit: Option<(i64, i64)> = None;
    let mut j = 4;
    while j < a.len() {
        let o = a[j];
        if is(o, "withscores") {
            scores = true;
        } else if is(o, "limit") && a.len() - j > 2 {
            let Some(off) = cx.int_arg(a[j + 1]) else {
                return;
            };
            let Some(cnt) = cx.int_arg(a[j + 2]) else {
                return;
            };
            limit = Some((off, cnt));
            j += 2;
        } else if is(o, "rev") && !rev {
            rev = true;
        } else if is(o, "bylex") && !bylex && !byscore {
            bylex = true;
        } else if is(o, "byscore") && !bylex && !byscore {
            byscore = true;
        } else {
            err(cx.out, SYNTAX);
            return;
        }
        j += 1;
    }
    if limit.is_some() && !byscore && !bylex {
        err(
            cx.out,
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        );
        return;
    }
    if scores && bylex {
        err(
            cx.out,
            "syntax error, WITHSCORES not supported in combination with BYLEX",
        );
        return;
    }
    let key = a[1];
    let picked: Vec<(f64, Vec<u8>)> = if byscore || bylex {
        // Given as max, min with REV.
        let (lo, hi) = if rev { (a[3], a[2]) } else { (a[2], a[3]) };
        let inside: Box<InRange<'_>> = if byscore {
            let (Some((min, minx)), Some((max, maxx))) = (score_bound(lo), score_bound(hi)) else {
                err(cx.out, "min or max is not a float");
                return;
            };
            Box::new(move |s, _| {
                (if minx { s > min } else { s >= min }) && (if maxx { s < max } else { s <= max })
            })
        } else {
            let (Some(min), Some(max)) = (Lex::parse(lo), Lex::parse(hi)) else {
                err(cx.out, "min or max not valid string range item");
                return;
            };
            Box::new(move |_, m| min.below(m) && max.above(m))
        };
        let mut l = cx.lock(key);
        let z = lookup!(cx, l, key, Zset, array(cx.out, 0));
        let (off, cnt) = limit.unwrap_or((0, -1));
        if off < 0 {
            array(cx.out, 0);
            return;
        }
        let it: Box<dyn Iterator<Item = &(Score, Vec<u8>)>> = if rev {
            Box::new(z.order.iter().rev())
        } else {
            Box::new(z.order.iter())
        };
        let it = it.filter(|(s, m)| inside(s.0, m)).skip(off as usize);
        let it = it.take(if cnt < 0 { usize::MAX } else { cnt as usize });
        it.map(|(s, m)| (s.0, m.clone())).collect()
    } else {
        let Some(s) = cx.int_arg(a[2]) else { return };
        let Some(e) = cx.int_arg(a[3]) else { return };
        let mut l = cx.lock(key);
        let z = lookup!(cx, l, key, Zset, array(cx.out, 0));
        let Some((s, e)) = range(s, e, z.order.len()) else {
            array(cx.out, 0);
            return;
        };
        // The ranks in ascending order; walked to from the nearer end (a BTreeSet has no
        // rank index: O(distance)).
        let last = z.order.len() - 1;
        let (from, to) = if rev { (last - e, last - s) } else { (s, e) };
        let n = to - from + 1;
        let mut picked: Vec<(f64, Vec<u8>)> = if from <= last - to {
            let it = z.order.iter().skip(from).take(n);
            it.map(|(s, m)| (s.0, m.clone())).collect()
        } else {
            let it = z.order.iter().rev().skip(last - to).take(n);
            let mut v: Vec<_> = it.map(|(s, m)| (s.0, m.clone())).collect();
            v.reverse();
            v
        };
        if rev {
            picked.reverse();
        }
        picked
    };
    array(cx.out, picked.len() * if scores { 2 } else { 1 });
    for (s, m) in &picked {
        bulk(cx.out, m);
        if scores {
            double(cx.out, *s);
        }
    }
}

fn zscore(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let z = lookup!(cx, l, a[1], Zset, null(cx.out));
    match z.scores.get(a[2]) {
        Some(&s) => double(cx.out, s),
        None => null(cx.out),
    }
}

fn zcard(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let mut l = cx.lock(a[1]);
    let z = lookup!(cx, l, a[1], Zset, int(cx.out, 0));
    int(cx.out, z.scores.len() as i64);
}

fn dbsize(cx: &mut Cx<'_, '_>, _: &[&[u8]]) {
    let l = cx.env.keyspace.lock_all(cx.env.now_ms, false);
    int(cx.out, l.count().0 as i64);
}

/// FLUSHALL, FLUSHDB [ASYNC|SYNC]: both done at once, under every lock.
fn flush(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if a.len() > 2 || (a.len() == 2 && !is(a[1], "async") && !is(a[1], "sync")) {
        err(cx.out, SYNTAX);
        return;
    }
    let mut l = cx.env.keyspace.lock_all(cx.env.now_ms, cx.live);
    // An empty keyspace stays as it is: nothing to journal.
    if l.count().0 > 0 {
        l.clear();
        cx.log(&mut l, &a[..1]);
    }
    ok(cx.out);
}

fn select(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    match string2ll(a[1]).filter(|n| i32::try_from(*n).is_ok()) {
        None => err(cx.out, NOT_INT),
        // One database, as a cluster has.
        Some(0) => ok(cx.out),
        Some(_) => err(cx.out, "DB index is out of range"),
    }
}

/// COMMAND (no documents: an empty array), COMMAND COUNT, COMMAND DOCS.
fn command(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    match a.get(1) {
        None => array(cx.out, 0),
        Some(s) if is(s, "count") => int(cx.out, COMMANDS.len() as i64),
        Some(s) if is(s, "docs") => array(cx.out, 0),
        Some(_) => unknown_sub(cx.out, a),
    }
}

fn client(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let s = a[1];
    if is(s, "id") {
        int(cx.out, cx.client.id as i64);
    } else if is(s, "getname") {
        match &cx.client.name {
            Some(n) => bulk(cx.out, n),
            None => null(cx.out),
        }
    } else if is(s, "setname") {
        if set_name(cx, a[2]) {
            ok(cx.out);
        }
    } else if is(s, "setinfo") {
        // Redis 7.2's: accepted (and not kept).
        ok(cx.out);
    } else {
        unknown_sub(cx.out, a);
    }
}

/// CLIENT SETNAME's rule: printable ASCII without spaces; empty clears the name.
fn set_name(cx: &mut Cx<'_, '_>, name: &[u8]) -> bool {
    if !valid_name(cx, name) {
        return false;
    }
    cx.client.name = (!name.is_empty()).then(|| name.into());
    true
}

fn valid_name(cx: &mut Cx<'_, '_>, name: &[u8]) -> bool {
    let ok = name.iter().all(|&b| (b'!'..=b'~').contains(&b));
    if !ok {
        err(
            cx.out,
            "Client names cannot contain spaces, newlines or special characters.",
        );
    }
    ok
}

/// HELLO [2 [AUTH user pass] [SETNAME name]]: RESP2 only (HELLO 3 is refused); the one
/// user is Redis's default, without a password (any password is taken).
fn hello(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if let Some(v) = a.get(1) {
        match string2ll(v) {
            None => {
                err(cx.out, "Protocol version is not an integer or out of range");
                return;
            }
            Some(2) => {}
            Some(_) => {
                cx.out
                    .extend_from_slice(b"-NOPROTO unsupported protocol version\r\n");
                return;
            }
        }
    }
    let (mut j, mut user, mut name) = (2, None, None);
    while j < a.len() {
        let more = a.len() - 1 - j;
        if is(a[j], "auth") && more >= 2 {
            user = Some(a[j + 1]);
            j += 3;
        } else if is(a[j], "setname") && more >= 1 {
            if !valid_name(cx, a[j + 1]) {
                return;
            }
            name = Some(a[j + 1]);
            j += 2;
        } else {
            err_parts(
                cx.out,
                &[b"Syntax error in HELLO option '", cstr(a[j]), b"'"],
            );
            return;
        }
    }
    if user.is_some_and(|u| u != b"default") {
        cx.out.extend_from_slice(
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        );
        return;
    }
    if let Some(n) = name {
        set_name(cx, n);
    }
    let out = &mut *cx.out;
    array(out, 14);
    for (k, v) in [("server", "redis"), ("version", VERSION)] {
        bulk(out, k.as_bytes());
        bulk(out, v.as_bytes());
    }
    bulk(out, b"proto");
    int(out, 2);
    bulk(out, b"id");
    int(out, cx.client.id as i64);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        bulk(out, k.as_bytes());
        bulk(out, v.as_bytes());
    }
    bulk(out, b"modules");
    array(out, 0);
}

/// CONFIG GET of the parameters clients ask for (redis-benchmark: save, appendonly), by
/// exact name (no glob patterns); others match nothing, as unknown ones do in Redis.
fn config(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    if !is(a[1], "get") {
        unknown_sub(cx.out, a);
        return;
    }
    let ks = cx.env.keyspace;
    let maxmemory = ks.maxmemory().unwrap_or(0).to_string();
    let appendonly = if ks.journal().is_some() { "yes" } else { "no" };
    let mut found = Vec::new();
    for p in &a[2..] {
        let v = match () {
            _ if is(p, "save") => "",
            _ if is(p, "appendonly") => appendonly,
            _ if is(p, "maxmemory") => &maxmemory,
            _ => continue,
        };
        found.push((*p, v));
    }
    array(cx.out, found.len() * 2);
    for (p, v) in found {
        bulk(cx.out, p);
        bulk(cx.out, v.as_bytes());
    }
}

/// INFO [section ...]: the server and keyspace sections (for no section, `default`, `all`
/// and `everything` too); other sections are empty.
fn info(cx: &mut Cx<'_, '_>, a: &[&[u8]]) {
    let all = a.len() == 1
        || a[1..]
            .iter()
            .any(|s| is(s, "default") || is(s, "all") || is(s, "everything"));
    let want = |name: &str| all || a[1..].iter().any(|s| is(s, name));
    let mut s = String::new();
    if want("server") {
        s.push_str("# Server\r\n");
        s.push_str(&format!(
            "redis_version:{VERSION}\r\nredis_mode:standalone\r\narch_bits:64\r\n"
        ));
    }
    if want("keyspace") {
        if !s.is_empty() {
            s.push_str("\r\n");
        }
        s.push_str("# Keyspace\r\n");
        let (keys, expires) = cx.env.keyspace.lock_all(cx.env.now_ms, false).count();
        if keys > 0 {
            s.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
        }
    }
    bulk(cx.out, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_are_percent_17g() {
        for (d, s) in [
            (1.5, "1.5"),
            (0.1, "0.10000000000000001"),
            (1e20, "1e+20"),
            (1e17, "1e+17"),
            (1e16, "10000000000000000"),
            (1e-5, "1.0000000000000001e-05"),
            (1e-4, "0.0001"),
            (3.0, "3"),
            (-2.5, "-2.5"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1.0 / 3.0, "0.33333333333333331"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (1e300, "1.0000000000000001e+300"),
        ] {
            assert_eq!(fmt_double(d), s, "{d}");
        }
    }

    #[test]
    fn doubles_are_read_as_strtod() {
        assert_eq!(parse_double(b"1.5"), Some(1.5));
        assert_eq!(parse_double(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_double(b"+inf"), Some(f64::INFINITY));
        assert_eq!(parse_double(b".5"), Some(0.5));
        assert_eq!(parse_double(b"0x10"), Some(16.0));
        assert_eq!(parse_double(b"-0x1.8p1"), Some(-3.0));
        assert_eq!(parse_double(b"INF"), Some(f64::INFINITY));
        for bad in [
            "", " 1", "1 ", "nan", "1e400", "1e-400", "x", "1.5x", "0x", "0xg", "1_0",
        ] {
            assert_eq!(parse_double(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn range_is_redis_range() {
        assert_eq!(range(0, -1, 3), Some((0, 2)));
        assert_eq!(range(-100, 100, 3), Some((0, 2)));
        assert_eq!(range(2, 1, 3), None);
        assert_eq!(range(3, 5, 3), None);
        assert_eq!(range(0, 0, 0), None);
    }
}
