//! The Redis protocol (RESP2), the server's side: an incremental request parser
//! (multibulk and inline commands, pipelined, split anywhere), the commands, and the one
//! keyspace every connection of a server shares ([`Keyspace`]). Replies are byte for byte
//! Redis 7's. Pure: bytes in, bytes out, no I/O, no unsafe; the keyspace is shared between
//! threads behind locks, and its journal ([`Journal`]) only gathers the append-only file's
//! records, which the engines write.
//!
//! [`check`] is the load generator's side: its requests and the check of every reply.

pub mod check;
mod command;
pub mod keyspace;
mod resp;

use std::time::{Duration, Instant};

pub use keyspace::{Config, Journal, Keyspace, Replay};

/// What a request may be; over these the connection gets Redis's `-ERR Protocol error: ...`
/// and is closed, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One bulk string (`--max-bulk-bytes`; Redis's proto-max-bulk-len).
    pub max_bulk_bytes: u64,
    /// The arguments of one multibulk request.
    pub max_multibulk: u32,
}

impl Default for Limits {
    /// Redis's own: 512 MiB bulks; and at most 1,048,576 arguments.
    fn default() -> Self {
        Limits {
            max_bulk_bytes: 512 * 1024 * 1024,
            max_multibulk: 1024 * 1024,
        }
    }
}

/// What a connection reads from its shard while commands run.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub keyspace: &'a Keyspace,
    pub limits: Limits,
    /// Unix time in milliseconds at the start of the shard's loop turn (expiry runs on it).
    pub now_ms: u64,
    /// The same moment on the monotonic clock (the access log times commands by it).
    pub now: Instant,
}

/// What one call to `Session::on_input` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Replies written (one per command read whole, or the one protocol error).
    pub answers: u32,
    /// The last reply closes the connection (QUIT, a protocol error): send what was
    /// written, then close.
    pub close: bool,
    /// The journal position just after the last record the commands appended, if any
    /// appended one: with `--appendfsync always`, their replies wait until it is durable.
    pub lsn: Option<u64>,
}

/// One command answered, as the access log reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The command and its arguments, each cut at `LOG_ARG_MAX` bytes, at most `LOG_ARGS` of
    /// them, raw (the log escapes them).
    pub args: Vec<Vec<u8>>,
    /// The command had more arguments than are kept.
    pub more: bool,
    /// The reply was an error.
    pub error: bool,
    /// Bytes of the reply.
    pub reply_bytes: u32,
    /// From the command's first byte to its reply.
    pub took: Duration,
}

/// The most bytes of one argument the access log keeps.
pub const LOG_ARG_MAX: usize = 128;
/// The most arguments of one command the access log keeps (the name included).
pub const LOG_ARGS: usize = 4;

/// What the access log gathers of a connection's commands, when the connection logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capture {
    /// When the first byte of the command being read arrived.
    since: Option<Instant>,
    /// The commands answered, oldest first, until the caller takes them.
    pub answered: Vec<Logged>,
}

/// One connection's state: what it holds of a command begun, and its client id and name.
/// Idle (nothing held, unnamed) it owns no heap memory: 56 bytes, a million of them 56 MB.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    /// The start of a command not yet whole (Redis's query buffer); empty (unallocated)
    /// between commands.
    held: Vec<u8>,
    /// How far the command in `held` is known good.
    resume: resp::Resume,
    client: command::Client,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Bytes held of a command begun (0 when idle).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Reads `input`, running every command it completes and appending its reply to `out`;
    /// a connection that logs records each command in `log`. Commands that arrive whole
    /// are read in place; only the start of a partial one is kept.
    pub fn on_input(
        &mut self,
        input: &[u8],
        env: &Env<'_>,
        out: &mut Vec<u8>,
        mut log: Option<&mut Capture>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        if let Some(c) = log.as_deref_mut()
            && c.since.is_none()
            && !input.is_empty()
        {
            c.since = Some(env.now);
        }
        let Session {
            held,
            resume,
            client,
        } = self;
        let from_held = !held.is_empty();
        if from_held {
            held.extend_from_slice(input);
        }
        let mut at = 0;
        // A partial command still partial: nothing to parse again.
        let waiting = from_held && !resp::resume(held, &env.limits, resume);
        if !waiting {
            *resume = resp::Resume::default();
            let data: &[u8] = if from_held { held } else { input };
            let mut args = resp::Args::default();
            while !outcome.close {
                let start = out.len();
                let parsed = resp::parse(&data[at..], &env.limits, &mut args);
                let (used, run) = match parsed {
                    resp::Parsed::Partial(used, r) => {
                        at += used;
                        *resume = r;
                        break;
                    }
                    resp::Parsed::Multibulk(used) => {
                        let a = args.as_slice();
                        let run = command::run(a, env, client, true, out);
                        if let Some(c) = log.as_deref_mut() {
                            record(c, a, out, start, env.now);
                        }
                        (used, run)
                    }
                    resp::Parsed::Inline(used, words) => {
                        let a: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
                        let run = command::run(&a, env, client, true, out);
                        if let Some(c) = log.as_deref_mut() {
                            record(c, &a, out, start, env.now);
                        }
                        (used, run)
                    }
                    resp::Parsed::Error(e) => {
                        e.reply(out);
                        if let Some(c) = log.as_deref_mut() {
                            record(c, &[], out, start, env.now);
                        }
                        (
                            0,
                            command::Run {
                                lsn: None,
                                close: true,
                            },
                        )
                    }
                };
                at += used;
                outcome.answers += 1;
                outcome.close = run.close;
                if run.lsn.is_some() {
                    outcome.lsn = run.lsn;
                }
            }
        }
        if outcome.close {
            *held = Vec::new();
            *resume = resp::Resume::default();
        } else if from_held {
            held.drain(..at);
        } else {
            held.extend_from_slice(&input[at..]);
        }
        if held.is_empty() {
            // Free what a long command took: an idle session holds nothing.
            *held = Vec::new();
        }
        if let Some(c) = log {
            c.since = (!held.is_empty()).then(|| c.since.unwrap_or(env.now));
        }
        outcome
    }
}

/// Records the command `args` whose reply is `out[start..]`.
fn record(c: &mut Capture, args: &[&[u8]], out: &[u8], start: usize, now: Instant) {
    let since = c.since.take().unwrap_or(now);
    c.answered.push(Logged {
        args: args
            .iter()
            .take(LOG_ARGS)
            .map(|a| a[..a.len().min(LOG_ARG_MAX)].to_vec())
            .collect(),
        more: args.len() > LOG_ARGS,
        error: out.get(start) == Some(&b'-'),
        reply_bytes: (out.len() - start) as u32,
        took: now.saturating_duration_since(since),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn env(ks: &Keyspace) -> Env<'_> {
        Env {
            keyspace: ks,
            limits: Limits::default(),
            now_ms: NOW_MS,
            now: Instant::now(),
        }
    }

    /// `input`'s replies on a fresh session.
    fn replies(ks: &Keyspace, input: &[u8]) -> (Vec<u8>, Outcome) {
        let mut out = Vec::new();
        let o = Session::new().on_input(input, &env(ks), &mut out, None);
        (out, o)
    }

    fn req(args: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        keyspace::encode(
            &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>(),
            &mut v,
        );
        v
    }

    #[test]
    fn an_idle_session_is_small_and_holds_nothing() {
        // A Vec (24), the resume point (8), the client id (8) and an optional boxed name (16).
        assert_eq!(std::mem::size_of::<Session>(), 56);
        let ks = Keyspace::new(Config::default());
        let mut s = Session::new();
        let mut out = Vec::new();
        s.on_input(b"*2\r\n$3\r\nGET\r\n$1\r", &env(&ks), &mut out, None);
        assert_eq!(s.held(), 16);
        s.on_input(b"\nk\r\n", &env(&ks), &mut out, None);
        assert_eq!(out, b"$-1\r\n");
        assert_eq!((s.held(), s.held.capacity()), (0, 0));
    }

    #[test]
    fn replies_are_the_same_at_every_split() {
        let mut input = Vec::new();
        for r in [
            &["SET", "k", "v"][..],
            &[
                "RPUSH", "l", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
            ],
            &["LRANGE", "l", "0", "-1"],
            &["GET", "k"],
        ] {
            input.extend(req(r));
        }
        input.extend_from_slice(b"\r\nSET \"x y\" 'z'\r\nGET \"x y\"\nPING\r\n");
        let (whole, o) = replies(&Keyspace::new(Config::default()), &input);
        assert_eq!(o.answers, 7);
        for cut in 0..=input.len() {
            let ks = Keyspace::new(Config::default());
            let mut s = Session::new();
            let mut out = Vec::new();
            let mut log = Capture::default();
            let a = s.on_input(&input[..cut], &env(&ks), &mut out, Some(&mut log));
            let b = s.on_input(&input[cut..], &env(&ks), &mut out, Some(&mut log));
            assert_eq!(out, whole, "cut at {cut}");
            assert_eq!(a.answers + b.answers, 7);
            assert_eq!(log.answered.len(), 7);
        }
    }

    #[test]
    fn a_command_of_many_arguments_fed_a_byte_at_a_time() {
        let ks = Keyspace::new(Config::default());
        let members: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        let mut args = vec!["SADD", "s"];
        args.extend(members.iter().map(String::as_str));
        let mut input = req(&args);
        input.extend(b"*2\r\n$5\r\nSCARD\r\n$1\r\ns\r\n*2\r\n$1\r\na\r\n:1\r\n");
        let mut s = Session::new();
        let mut out = Vec::new();
        let mut close = false;
        for b in input.chunks(1) {
            close |= s.on_input(b, &env(&ks), &mut out, None).close;
        }
        let bad = b"-ERR Protocol error: expected '$', got ':'\r\n";
        assert_eq!(out, [&b":300\r\n:300\r\n"[..], bad].concat());
        assert!(close);
    }

    #[test]
    fn a_protocol_error_closes_after_the_replies_before_it() {
        let ks = Keyspace::new(Config::default());
        let mut log = Capture::default();
        let mut out = Vec::new();
        let o = Session::new().on_input(
            b"PING\r\n*1\r\n:x\r\nPING\r\n",
            &env(&ks),
            &mut out,
            Some(&mut log),
        );
        assert_eq!(
            out,
            b"+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
        );
        assert_eq!((o.answers, o.close), (2, true));
        assert!(log.answered[1].error && log.answered[1].args.is_empty());
    }

    fn journaled(ks: &Keyspace) -> Vec<u8> {
        let j = ks.journal().expect("journal on");
        let (bytes, _) = j.take(Vec::new()).unwrap_or_default();
        j.written();
        bytes
    }

    #[test]
    fn writes_are_journaled_with_absolute_times_and_no_ops_are_not() {
        let ks = Keyspace::new(Config {
            maxmemory: None,
            journal: true,
        });
        let (_, o) = replies(&ks, &req(&["FLUSHALL"]));
        assert_eq!(o.lsn, None, "nothing to flush");
        let (_, o) = replies(&ks, &req(&["SET", "k", "v", "EX", "10"]));
        let rec = req(&["SET", "k", "v", "PXAT", &(NOW_MS + 10_000).to_string()]);
        assert_eq!(o.lsn, Some(rec.len() as u64));
        assert_eq!(journaled(&ks), rec);
        let (_, o) = replies(&ks, &req(&["EXPIRE", "k", "5"]));
        assert!(o.lsn.is_some());
        let at = (NOW_MS + 5_000).to_string();
        assert_eq!(journaled(&ks), req(&["PEXPIREAT", "k", &at]));
        for noop in [
            &["DEL", "nope"][..],
            &["SET", "k", "w", "NX"],
            &["GET", "k"],
            &["EXPIRE", "nope", "1"],
            &["LPOP", "nope"],
            &["SREM", "nope", "a"],
            &["INCR", "k"],
        ] {
            let (_, o) = replies(&ks, &req(noop));
            assert_eq!(o.lsn, None, "{noop:?}");
        }
        assert!(!ks.journal().unwrap().pending());
        replies(&ks, &req(&["EXPIRE", "k", "-1"]));
        assert_eq!(journaled(&ks), req(&["DEL", "k"]));
    }

    #[test]
    fn journal_take_hands_out_one_write_at_a_time() {
        let j = Journal::default();
        assert_eq!(j.take(Vec::new()), None);
        let a = j.append(&[b"PING"]);
        let (bytes, end) = j.take(Vec::new()).unwrap();
        assert_eq!((bytes.len() as u64, end), (a, a));
        let b = j.append(&[b"PING"]);
        assert!(j.pending());
        assert_eq!(j.take(Vec::new()), None, "a write is in flight");
        j.written();
        assert_eq!(j.take(bytes).unwrap().1, b);
        j.set_durable(b);
        j.set_durable(a);
        assert_eq!(j.durable(), b);
    }

    #[test]
    fn a_journal_replays_to_the_same_keyspace_and_stops_at_a_torn_record() {
        let ks = Keyspace::new(Config {
            maxmemory: None,
            journal: true,
        });
        let script = [
            &["SET", "s", "1", "PX", "100000"][..],
            &["INCRBY", "s", "41"],
            &["RPUSH", "l", "a", "b", "c"],
            &["LPOP", "l"],
            &["HSET", "h", "f", "v", "g", "w"],
            &["HDEL", "h", "f"],
            &["SADD", "set", "x", "y", "z"],
            &["SPOP", "set", "2"],
            &["ZADD", "z", "2", "b", "1", "a"],
            &["ZADD", "z", "INCR", "5", "a"],
            &["ZPOPMIN", "z"],
            &["MSET", "m1", "1", "m2", "2"],
            &["DEL", "m1"],
            &["SET", "gone", "v", "PXAT", "1"],
        ];
        for r in script {
            replies(&ks, &req(r));
        }
        let file = journaled(&ks);
        let look = [
            &["GET", "s"][..],
            &["PTTL", "s"],
            &["LRANGE", "l", "0", "-1"],
            &["HGETALL", "h"],
            &["SMEMBERS", "set"],
            &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
            &["MGET", "m1", "m2", "gone"],
            &["DBSIZE"],
        ];
        let state = |ks: &Keyspace| -> Vec<u8> {
            look.iter().flat_map(|r| replies(ks, &req(r)).0).collect()
        };
        let again = Keyspace::new(Config::default());
        let r = again.replay(&file, NOW_MS);
        assert_eq!(
            r,
            Replay {
                commands: script.len() as u64,
                valid: file.len(),
                error: None
            }
        );
        assert_eq!(state(&again), state(&ks));
        let torn = Keyspace::new(Config::default());
        let r = torn.replay(&file[..file.len() - 3], NOW_MS);
        let last = req(script.last().unwrap()).len();
        assert_eq!(
            (r.commands, r.valid, r.error),
            (script.len() as u64 - 1, file.len() - last, None)
        );
        let bad =
            Keyspace::new(Config::default()).replay(b"*1\r\n$4\r\nPING\r\n*1\r\n+x\r\n", NOW_MS);
        assert_eq!((bad.commands, bad.valid), (1, 14));
        assert_eq!(bad.error.as_deref(), Some("expected '$', got '+'"));
    }

    #[test]
    fn one_sweep_a_period_whatever_asks() {
        let ks = Keyspace::new(Config::default());
        assert!(ks.sweep_due(NOW_MS, 100));
        assert!(
            !ks.sweep_due(NOW_MS, 100),
            "a second shard in the same period"
        );
        assert!(!ks.sweep_due(NOW_MS + 99, 100));
        assert!(ks.sweep_due(NOW_MS + 100, 100));
    }

    #[test]
    fn sweep_removes_expired_keys_a_bounded_amount_at_a_time() {
        let ks = Keyspace::new(Config::default());
        let mut input = Vec::new();
        for i in 0..3000 {
            input.extend(req(&["SET", &format!("k{i}"), "v", "PX", "10"]));
        }
        input.extend(req(&["SET", "stays", "v", "EX", "100"]));
        input.extend(req(&["SET", "forever", "v"]));
        replies(&ks, &input);
        assert_eq!(ks.len(), 3002);
        assert_eq!(ks.sweep(NOW_MS + 10), 0, "nothing past its deadline yet");
        let mut removed = Vec::new();
        loop {
            match ks.sweep(NOW_MS + 11) {
                0 => break,
                n => removed.push(n),
            }
        }
        assert!(removed.iter().all(|&n| n <= 1000), "{removed:?}");
        assert_eq!(removed.iter().sum::<u32>(), 3000);
        assert_eq!(ks.len(), 2);
    }

    /// Keys gain, change, lose and regain TTLs in every way the commands allow; the keys the
    /// sweep knows to have one stay exactly those (INFO's count, and what expires).
    #[test]
    fn the_keys_with_a_ttl_stay_known_through_every_change() {
        let ks = Keyspace::new(Config::default());
        let mut ttl = std::collections::BTreeMap::new();
        let mut x: u64 = 7;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 300);
            let (cmd, has): (Vec<&str>, Option<bool>) = match (x >> 20) % 6 {
                0 => (vec!["SET", &key, "v", "EX", "100"], Some(true)),
                1 => (vec!["SET", &key, "v"], Some(false)),
                2 => (vec!["PERSIST", &key], ttl.get(&key).map(|_| false)),
                3 => (vec!["EXPIRE", &key, "50"], ttl.get(&key).map(|_| true)),
                4 => (vec!["DEL", &key], None),
                _ => (
                    vec!["SET", &key, "v", "KEEPTTL"],
                    Some(ttl.get(&key) == Some(&true)),
                ),
            };
            replies(&ks, &req(&cmd));
            match has {
                Some(h) => ttl.insert(key, h),
                None => ttl.remove(&key),
            };
        }
        let with = ttl.values().filter(|&&h| h).count() as u64;
        let counted = ks.lock_all(NOW_MS, false).count();
        assert_eq!(counted, (ttl.len() as u64, with));
        while ks.sweep(NOW_MS + 200_000) > 0 {}
        assert_eq!(ks.len(), ttl.len() as u64 - with);
        assert_eq!(ks.lock_all(NOW_MS, false).count().1, 0);
    }

    #[test]
    fn over_maxmemory_commands_that_grow_are_refused() {
        let ks = Keyspace::new(Config {
            maxmemory: Some(1000),
            journal: false,
        });
        let big = "x".repeat(2000);
        assert_eq!(replies(&ks, &req(&["SET", "a", &big])).0, b"+OK\r\n");
        let oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        for grow in [
            &["SET", "b", "1"][..],
            &["LPUSH", "l", "a"],
            &["INCR", "n"],
            &["SADD", "s", "1"],
        ] {
            assert_eq!(replies(&ks, &req(grow)).0, oom, "{grow:?}");
        }
        assert_eq!(
            replies(&ks, &req(&["SET", "b"])).0,
            b"-ERR wrong number of arguments for 'set' command\r\n"
        );
        assert_eq!(replies(&ks, &req(&["STRLEN", "a"])).0, b":2000\r\n");
        assert_eq!(replies(&ks, &req(&["DEL", "a"])).0, b":1\r\n");
        assert_eq!(ks.used_memory(), 0);
        assert_eq!(replies(&ks, &req(&["SET", "b", "1"])).0, b"+OK\r\n");
    }

    #[test]
    fn multi_key_commands_are_atomic() {
        fn shared<T: Send + Sync>() {}
        shared::<Keyspace>();
        let ks = Keyspace::new(Config::default());
        let keys: Vec<String> = (0..16).map(|i| format!("key{i}")).collect();
        std::thread::scope(|s| {
            for v in ["x", "y"] {
                let (ks, keys) = (&ks, &keys);
                s.spawn(move || {
                    let mut mset = vec!["MSET"];
                    for k in keys {
                        mset.extend([k.as_str(), v]);
                    }
                    for _ in 0..200 {
                        replies(ks, &req(&mset));
                    }
                });
            }
            for _ in 0..200 {
                let mut mget = vec!["MGET"];
                mget.extend(keys.iter().map(String::as_str));
                let (out, _) = replies(&ks, &req(&mget));
                let (x, y) = (
                    out.windows(3).filter(|w| w == b"\nx\r").count(),
                    out.windows(3).filter(|w| w == b"\ny\r").count(),
                );
                assert!(x == 0 || y == 0, "MGET saw two MSETs");
            }
        });
    }
}
