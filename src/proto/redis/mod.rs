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
/// Idle (nothing held, unnamed) it owns no heap memory: 48 bytes, a million of them 48 MB.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    /// The start of a command not yet whole (Redis's query buffer); empty (unallocated)
    /// between commands.
    held: Vec<u8>,
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
        let Session { held, client } = self;
        let from_held = !held.is_empty();
        if from_held {
            held.extend_from_slice(input);
        }
        let mut at = 0;
        {
            let data: &[u8] = if from_held { held } else { input };
            let mut args = resp::Args::default();
            while !outcome.close {
                let start = out.len();
                let parsed = resp::parse(&data[at..], &env.limits, &mut args);
                let (used, run) = match parsed {
                    resp::Parsed::Partial(used) => {
                        at += used;
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
