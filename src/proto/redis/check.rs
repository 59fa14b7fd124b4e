//! The load generator's side of the Redis protocol: its requests (memtier_benchmark's
//! workload of SETs and GETs, as RESP2 multibulks) and the check of every reply, read
//! incrementally whatever the splits.
//!
//! Every reply is known before it comes, with no memory per key: connection `c` of `conns`
//! owns the key IDs `c, c + conns, c + 2 conns, ...` up to `key_maximum` (its share of `n`
//! keys), and its commands cycle through `sets` SETs, then `gets` GETs (`--ratio`). Its SET
//! number `j` writes key `j mod n` with a value made from `(seed, c, j)`; a GET reads a key
//! one of its SETs has written, chosen by a hash, whose value is that of the last SET of the
//! key, known from the count of SETs so far. Redis runs a connection's commands in order, so
//! this holds however many are pipelined. A run never reads a key it has not written, so
//! what earlier runs left in the server does not matter.

use std::io::Write;

/// The commands of a run: memtier_benchmark's `--ratio`, `--key-maximum`, `--key-prefix`
/// and `--data-size`, and a TTL for every SET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// SETs, then GETs, in each cycle of a connection's commands; `sets` is at least 1.
    pub sets: u32,
    pub gets: u32,
    /// The run's connections, which share the key IDs out.
    pub conns: u64,
    /// The highest key ID: at least `conns - 1`, so that each connection has a key.
    pub key_maximum: u64,
    pub key_prefix: Vec<u8>,
    pub data_size: usize,
    /// Every SET is `SET key value EX ttl`: a GET may find its key expired.
    pub ttl: Option<u32>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Set,
    Get,
}

/// One command of a connection: its key ID, and the SET (numbered from 0 on the
/// connection) whose value it writes, or whose value a GET must read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub verb: Verb,
    pub key: u64,
    pub set: u64,
}

/// The values' bytes: printable, so a capture reads well.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// splitmix64's finalizer: a different u64 for every input.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Commands {
    /// Key IDs connection `conn` owns.
    fn share(&self, conn: u64) -> u64 {
        (self.key_maximum - conn) / self.conns + 1
    }

    /// Command `n` of connection `conn`.
    pub fn command(&self, conn: u64, n: u64) -> Command {
        let (s, cycle) = (u64::from(self.sets), u64::from(self.sets + self.gets));
        // SETs before command n.
        let set = n / cycle * s + (n % cycle).min(s);
        let share = self.share(conn);
        let id = |k: u64| conn + k * self.conns;
        if n % cycle < s {
            return Command {
                verb: Verb::Set,
                key: id(set % share),
                set,
            };
        }
        // Keys 0..written of the share have been set (a cycle starts with a SET, so set > 0);
        // the last SET of key k is the last j < set with j mod share = k.
        let written = set.min(share);
        let k = mix(self.seed ^ mix(conn) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % written;
        Command {
            verb: Verb::Get,
            key: id(k),
            set: k + (set - 1 - k) / share * share,
        }
    }

    /// Eight bytes of the value of SET `set` of connection `conn`, from byte `8 * word`.
    fn value_word(&self, conn: u64, set: u64, word: u64) -> [u8; 8] {
        let x = mix(mix(self.seed ^ mix(conn) ^ set.wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ word);
        x.to_le_bytes().map(|b| ALPHABET[usize::from(b & 63)])
    }

    /// Appends command `n` of connection `conn` as a RESP2 multibulk.
    pub fn encode(&self, conn: u64, n: u64, out: &mut Vec<u8>) {
        let c = self.command(conn, n);
        // Writes to a Vec cannot fail.
        let digits = |v: u64| v.checked_ilog10().unwrap_or(0) + 1;
        let key = |out: &mut Vec<u8>| {
            let len = self.key_prefix.len() as u64 + u64::from(digits(c.key));
            let _ = write!(out, "${len}\r\n");
            out.extend_from_slice(&self.key_prefix);
            let _ = write!(out, "{}\r\n", c.key);
        };
        match c.verb {
            Verb::Get => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                key(out);
            }
            Verb::Set => {
                let argc = if self.ttl.is_some() { 5 } else { 3 };
                let _ = write!(out, "*{argc}\r\n$3\r\nSET\r\n");
                key(out);
                let _ = write!(out, "${}\r\n", self.data_size);
                for w in 0..self.data_size.div_ceil(8) {
                    let bytes = self.value_word(conn, c.set, w as u64);
                    out.extend_from_slice(&bytes[..(self.data_size - w * 8).min(8)]);
                }
                out.extend_from_slice(b"\r\n");
                if let Some(ttl) = self.ttl {
                    let _ = write!(out, "$2\r\nEX\r\n${}\r\n{ttl}\r\n", digits(ttl.into()));
                }
            }
        }
    }
}

/// A reply the command may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// SET: `+OK`.
    Stored,
    /// GET: the value of the connection's last SET of the key.
    Hit,
    /// GET: nil, the key having expired (only with a TTL).
    Miss,
    /// An error reply (`-ERR unknown command`, `-OOM ...`), by its first word.
    Error(ErrorPrefix),
}

/// The first word of an error reply (Redis's error code: `ERR`, `WRONGTYPE`, `OOM`), cut
/// at 15 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPrefix {
    bytes: [u8; 15],
    len: u8,
}

impl std::fmt::Display for ErrorPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = &self.bytes[..usize::from(self.len)];
        f.write_str(&String::from_utf8_lossy(word))
    }
}

/// A reply other than one the command may get: another type, length or value, or a nil
/// without a TTL that could have expired the key. The replies after it cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unexpected(pub Verb);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// The one reply the command must get (or the first bytes of another).
    #[default]
    Expected,
    /// A nil bulk, `$-1`.
    Nil,
    /// An error reply: its first word, then the rest of its line.
    Error { word_done: bool },
    /// An error reply's `\r`: `\n` must follow.
    ErrorEnd,
}

/// The longest error line read (Redis's PROTO_INLINE_MAX_SIZE).
const MAX_ERROR_LINE: usize = 64 * 1024;
const OK: &[u8] = b"+OK\r\n";
const NIL: &[u8] = b"$-1\r\n";

/// What the reply to one command must be, worked out once per reply and call.
struct Expect {
    command: Command,
    /// `$<data_size>\r\n`.
    head: [u8; 24],
    head_len: usize,
    /// The value's word last worked out.
    word: Option<(u64, [u8; 8])>,
}

/// A connection's reader of replies, matching each, byte by byte, with the one its command
/// must get; a few words of state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplyCheck {
    /// Replies read whole: the one being read answers command `n`.
    n: u64,
    /// Bytes of it read so far.
    pos: usize,
    form: Form,
    prefix: ErrorPrefix,
}

impl ReplyCheck {
    pub fn new() -> ReplyCheck {
        ReplyCheck::default()
    }

    fn expect(&self, cmds: &Commands, conn: u64) -> Expect {
        let mut head = [0; 24];
        let mut w = &mut head[..];
        let _ = write!(w, "${}\r\n", cmds.data_size);
        let head_len = 24 - w.len();
        Expect {
            command: cmds.command(conn, self.n),
            head,
            head_len,
            word: None,
        }
    }

    /// Reads `input` of connection `conn`, calling `done` for every reply it completes.
    pub fn on_input(
        &mut self,
        input: &[u8],
        cmds: &Commands,
        conn: u64,
        mut done: impl FnMut(Reply),
    ) -> Result<(), Unexpected> {
        let mut e = self.expect(cmds, conn);
        for &b in input {
            if let Some(reply) = self.step(b, cmds, conn, &mut e)? {
                *self = ReplyCheck {
                    n: self.n + 1,
                    ..ReplyCheck::default()
                };
                done(reply);
                e = self.expect(cmds, conn);
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        b: u8,
        cmds: &Commands,
        conn: u64,
        e: &mut Expect,
    ) -> Result<Option<Reply>, Unexpected> {
        let verb = e.command.verb;
        let at = self.pos;
        self.pos += 1;
        if at == 0 && b == b'-' {
            self.form = Form::Error { word_done: false };
            return Ok(None);
        }
        match self.form {
            Form::Expected if verb == Verb::Set => {
                if OK[at] != b {
                    return Err(Unexpected(verb));
                }
                Ok((self.pos == OK.len()).then_some(Reply::Stored))
            }
            Form::Expected => {
                if at == 1 && b == b'-' && cmds.ttl.is_some() {
                    self.form = Form::Nil;
                    return Ok(None);
                }
                let body = e.head_len;
                let want = if at < body {
                    e.head[at]
                } else if at < body + cmds.data_size {
                    let i = (at - body) as u64;
                    let word = match e.word {
                        Some((w, bytes)) if w == i / 8 => bytes,
                        _ => {
                            let bytes = cmds.value_word(conn, e.command.set, i / 8);
                            e.word = Some((i / 8, bytes));
                            bytes
                        }
                    };
                    word[(i % 8) as usize]
                } else {
                    b"\r\n"[at - body - cmds.data_size]
                };
                if want != b {
                    return Err(Unexpected(verb));
                }
                Ok((self.pos == body + cmds.data_size + 2).then_some(Reply::Hit))
            }
            Form::Nil => {
                if NIL[at] != b {
                    return Err(Unexpected(verb));
                }
                Ok((self.pos == NIL.len()).then_some(Reply::Miss))
            }
            Form::Error { word_done } => {
                if self.pos > MAX_ERROR_LINE || b == b'\n' {
                    return Err(Unexpected(verb));
                }
                let ends = b == b' ' || b == b'\r';
                let p = &mut self.prefix;
                if !word_done && !ends && usize::from(p.len) < p.bytes.len() {
                    p.bytes[usize::from(p.len)] = b;
                    p.len += 1;
                }
                self.form = match b {
                    b'\r' => Form::ErrorEnd,
                    _ => Form::Error {
                        word_done: word_done || ends,
                    },
                };
                Ok(None)
            }
            Form::ErrorEnd => match b {
                b'\n' => Ok(Some(Reply::Error(self.prefix))),
                _ => Err(Unexpected(verb)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn commands(conns: u64, key_maximum: u64, ttl: Option<u32>) -> Commands {
        Commands {
            sets: 1,
            gets: 3,
            conns,
            key_maximum,
            key_prefix: b"memtier-".to_vec(),
            data_size: 13,
            ttl,
            seed: 7,
        }
    }

    /// The arguments of multibulks made by `encode` (their values hold no CR or LF).
    fn args(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut lines = text.split_terminator("\r\n");
        let mut out = Vec::new();
        while let Some(count) = lines.next() {
            let n: usize = count.strip_prefix('*').unwrap().parse().unwrap();
            let cmd = (0..n)
                .map(|_| {
                    let len: usize = lines.next().unwrap()[1..].parse().unwrap();
                    let arg = lines.next().unwrap().as_bytes().to_vec();
                    assert_eq!(arg.len(), len);
                    arg
                })
                .collect();
            out.push(cmd);
        }
        out
    }

    /// What Redis answers to `requests`, from a map of its own.
    fn redis(requests: &[u8], store: &mut HashMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args(requests) {
            match a[0].as_slice() {
                b"SET" => {
                    store.insert(a[1].clone(), a[2].clone());
                    out.extend_from_slice(b"+OK\r\n");
                }
                b"GET" => {
                    let v = &store[&a[1]];
                    out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                }
                other => panic!("{other:?}"),
            }
        }
        out
    }

    #[test]
    fn each_connection_owns_its_keys_and_each_get_reads_its_last_set_of_the_key() {
        // 3 connections over key IDs 0..=19: shares of 7, 7 and 6 keys.
        let cmds = commands(3, 19, None);
        for conn in 0..3 {
            let mut last = HashMap::new();
            let mut keys = std::collections::HashSet::new();
            for n in 0..400 {
                let c = cmds.command(conn, n);
                assert_eq!(c.key % 3, conn);
                assert!(c.key <= 19);
                match c.verb {
                    Verb::Set => {
                        last.insert(c.key, c.set);
                    }
                    Verb::Get => assert_eq!(last.get(&c.key), Some(&c.set), "{conn} {n}"),
                }
                keys.insert(c.key);
            }
            assert_eq!(keys.len() as u64, cmds.share(conn));
        }
        let verbs: Vec<Verb> = (0..8).map(|n| cmds.command(0, n).verb).collect();
        assert_eq!(verbs[..4], [Verb::Set, Verb::Get, Verb::Get, Verb::Get]);
        assert_eq!(verbs[4..], verbs[..4]);
    }

    #[test]
    fn requests_are_resp2_multibulks() {
        // One connection, one key: memtier-0.
        let cmds = commands(1, 0, None);
        let mut set = Vec::new();
        cmds.encode(0, 0, &mut set);
        let head = b"*3\r\n$3\r\nSET\r\n$9\r\nmemtier-0\r\n$13\r\n";
        assert_eq!(&set[..head.len()], head);
        assert_eq!(set.len(), head.len() + 13 + 2);
        let mut get = Vec::new();
        cmds.encode(0, 1, &mut get);
        assert_eq!(get, b"*2\r\n$3\r\nGET\r\n$9\r\nmemtier-0\r\n");
        let mut ttl = Vec::new();
        commands(1, 0, Some(60)).encode(0, 0, &mut ttl);
        assert!(ttl.starts_with(b"*5\r\n$3\r\nSET\r\n"));
        assert!(ttl.ends_with(b"\r\n$2\r\nEX\r\n$2\r\n60\r\n"));
        // Values differ from SET to SET and connection to connection.
        let value = |conn, n| {
            args(&{
                let mut v = Vec::new();
                commands(2, 99, None).encode(conn, n, &mut v);
                v
            })[0][2]
                .clone()
        };
        assert_ne!(value(0, 0), value(0, 4));
        assert_ne!(value(0, 0), value(1, 0));
    }

    #[test]
    fn replies_are_checked_whatever_the_split() {
        let cmds = commands(2, 9, None);
        let mut requests = Vec::new();
        for n in 0..24 {
            cmds.encode(1, n, &mut requests);
        }
        let mut stream = redis(&requests, &mut HashMap::new());
        // An error reply answers command 24 (a SET).
        stream.extend_from_slice(b"-OOM command not allowed\r\n");
        let mut want: Vec<Reply> = (0..24)
            .map(|n| match cmds.command(1, n).verb {
                Verb::Set => Reply::Stored,
                Verb::Get => Reply::Hit,
            })
            .collect();
        let mut oom = ErrorPrefix::default();
        oom.bytes[..3].copy_from_slice(b"OOM");
        oom.len = 3;
        want.push(Reply::Error(oom));
        for cut in 0..=stream.len() {
            let (mut c, mut got) = (ReplyCheck::new(), Vec::new());
            c.on_input(&stream[..cut], &cmds, 1, |r| got.push(r))
                .unwrap();
            c.on_input(&stream[cut..], &cmds, 1, |r| got.push(r))
                .unwrap();
            assert_eq!(got, want, "cut at {cut}");
        }
        assert_eq!(oom.to_string(), "OOM");
    }

    fn check(cmds: &Commands, input: &[u8]) -> Result<Vec<Reply>, Unexpected> {
        let mut got = Vec::new();
        ReplyCheck::new().on_input(input, cmds, 0, |r| got.push(r))?;
        Ok(got)
    }

    #[test]
    fn a_nil_is_a_miss_only_where_a_ttl_may_have_expired_the_key() {
        let nil = [&b"+OK\r\n"[..], b"$-1\r\n"].concat();
        assert_eq!(
            check(&commands(1, 0, Some(1)), &nil),
            Ok(vec![Reply::Stored, Reply::Miss])
        );
        assert_eq!(
            check(&commands(1, 0, None), &nil),
            Err(Unexpected(Verb::Get))
        );
    }

    #[test]
    fn other_replies_are_unexpected() {
        let cmds = commands(1, 0, None);
        let mut requests = Vec::new();
        cmds.encode(0, 0, &mut requests);
        cmds.encode(0, 1, &mut requests);
        let good = redis(&requests, &mut HashMap::new());
        assert_eq!(check(&cmds, &good), Ok(vec![Reply::Stored, Reply::Hit]));
        let set = Err(Unexpected(Verb::Set));
        let get = Err(Unexpected(Verb::Get));
        // An echo of the request; a reply of another type; a wrong byte of the value.
        assert_eq!(check(&cmds, &requests), set);
        assert_eq!(check(&cmds, b":1\r\n"), set);
        let mut wrong = good.clone();
        *wrong.iter_mut().rev().nth(3).unwrap() ^= 1;
        assert_eq!(check(&cmds, &wrong), get);
        // Another length, and a bulk longer than its length says.
        assert_eq!(check(&cmds, b"+OK\r\n$12\r\n"), get);
        let longer = [&good[..good.len() - 2], b"x\r\n"].concat();
        assert_eq!(check(&cmds, &longer), get);
        // An error line cut by a bare LF.
        assert_eq!(check(&cmds, b"-ERR x\n"), set);
        let long = [&b"-"[..], &[b'E'; 40], b" x\r\n"].concat();
        let Ok(replies) = check(&cmds, &long) else {
            panic!("an error reply")
        };
        assert!(matches!(replies[..], [Reply::Error(p)] if p.to_string() == "E".repeat(15)));
    }
}
