//! The commands: each runs on the keyspace and appends its reply, Redis 7's byte for byte.

use super::Env;

/// What running one command did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Run {
    /// The journal position after the record it appended, if it appended one.
    pub lsn: Option<u64>,
    /// QUIT: close once the reply is sent.
    pub close: bool,
}

/// Runs the command `args` (name first, never empty), appending its reply to `out`.
pub fn run(args: &[&[u8]], env: &Env<'_>, out: &mut Vec<u8>) -> Run {
    let mut r = Run::default();
    let name = args[0].to_ascii_lowercase();
    match (name.as_slice(), args.len()) {
        (b"ping", 1) => out.extend_from_slice(b"+PONG\r\n"),
        (b"quit", _) => {
            out.extend_from_slice(b"+OK\r\n");
            r.close = true;
        }
        (b"get", 2) => match env.keyspace.get(args[1]) {
            Some(v) => bulk(&v, out),
            None => out.extend_from_slice(b"$-1\r\n"),
        },
        (b"set", 3) => {
            r.lsn = env.keyspace.set(args[1], args[2], args);
            out.extend_from_slice(b"+OK\r\n");
        }
        _ => {
            out.extend_from_slice(b"-ERR unknown command\r\n");
        }
    }
    r
}

/// Runs a command of the append-only file at start (no reply is sent).
pub fn replay(args: &[&[u8]], env: &Env<'_>, out: &mut Vec<u8>) {
    run(args, env, out);
}

fn bulk(v: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}
