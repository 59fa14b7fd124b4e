//! The one keyspace of a server, shared by all its shards (threads): keys spread over
//! stripes, each behind its own lock, so commands on different keys seldom meet. And the
//! journal: the append-only file's records, appended while the key's lock is held, so the
//! file's order is the order in which commands on a key ran.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a keyspace is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// `--maxmemory`: over it, commands that may grow memory are refused (noeviction).
    pub maxmemory: Option<u64>,
    /// Write commands are journaled (`--appendonly`).
    pub journal: bool,
}

type Stripe = Mutex<HashMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug)]
pub struct Keyspace {
    stripes: Box<[Stripe]>,
    journal: Option<Journal>,
}

const STRIPES: usize = 256;

impl Keyspace {
    pub fn new(config: Config) -> Keyspace {
        Keyspace {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            journal: config.journal.then(Journal::default),
        }
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    fn stripe(&self, key: &[u8]) -> &Stripe {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let s = self.stripe(key).lock().unwrap_or_else(|e| e.into_inner());
        s.get(key).cloned()
    }

    /// Sets `key`, journaling `args`; the journal position after the record.
    pub(super) fn set(&self, key: &[u8], value: &[u8], args: &[&[u8]]) -> Option<u64> {
        let mut s = self.stripe(key).lock().unwrap_or_else(|e| e.into_inner());
        s.insert(key.to_vec(), value.to_vec());
        self.journal.as_ref().map(|j| j.append(args))
    }

    /// Active expiry: removes some expired keys, a bounded amount of work. How many.
    pub fn sweep(&self, _now_ms: u64) -> u32 {
        0
    }

    /// Keys held.
    pub fn len(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the commands of an append-only file's contents, as at start.
    pub fn replay(&self, bytes: &[u8], now_ms: u64) -> Replay {
        let limits = super::Limits::default();
        let mut parser = super::resp::Parser::default();
        parser.feed(bytes);
        let mut commands = 0;
        let mut out = Vec::new();
        let env = super::Env {
            keyspace: self,
            limits,
            now_ms,
            now: std::time::Instant::now(),
        };
        loop {
            match parser.next(&limits) {
                super::resp::Parsed::Command => {
                    out.clear();
                    super::command::replay(&parser.args(), &env, &mut out);
                    commands += 1;
                }
                super::resp::Parsed::Partial => break,
                super::resp::Parsed::Error(e) => {
                    return Replay {
                        commands,
                        valid: parser.position(),
                        error: Some(e.to_string()),
                    };
                }
            }
        }
        Replay {
            commands,
            valid: parser.position(),
            error: None,
        }
    }
}

/// What `Keyspace::replay` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Commands run.
    pub commands: u64,
    /// Bytes of whole commands from the start: a torn last record ends before the end.
    pub valid: usize,
    /// A malformed record, at `valid`.
    pub error: Option<String>,
}

/// The append-only file's records not yet handed to a write, and how far the file is
/// written and durable. Positions are bytes since the server started (LSNs).
#[derive(Debug, Default)]
pub struct Journal {
    inner: Mutex<Gathered>,
    durable: AtomicU64,
}

#[derive(Debug, Default)]
struct Gathered {
    bytes: Vec<u8>,
    /// The position after the last record appended.
    end: u64,
    /// A write of earlier records is in flight: the next waits for it (one at a time keeps
    /// the file in the journal's order).
    writing: bool,
}

impl Journal {
    /// Appends the command `args` as a RESP multibulk record; the position after it.
    pub fn append(&self, args: &[&[u8]]) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = g.bytes.len();
        encode(args, &mut g.bytes);
        g.end += (g.bytes.len() - before) as u64;
        g.end
    }

    /// The records to write next and the position they end at, if there are some and no
    /// write is in flight; `spare` is kept as the next buffer. The caller writes them all
    /// and then calls `written`.
    pub fn take(&self, spare: Vec<u8>) -> Option<(Vec<u8>, u64)> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.writing || g.bytes.is_empty() {
            return None;
        }
        g.writing = true;
        let mut spare = spare;
        spare.clear();
        let bytes = std::mem::replace(&mut g.bytes, spare);
        Some((bytes, g.end))
    }

    /// The write of what `take` handed out is done.
    pub fn written(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).writing = false;
    }

    /// Records are waiting to be written.
    pub fn pending(&self) -> bool {
        !self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .is_empty()
    }

    /// The position up to which the file is durable (fsynced).
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// An fsync that began once the file held everything before `lsn` has completed.
    pub fn set_durable(&self, lsn: u64) {
        self.durable.fetch_max(lsn, Ordering::AcqRel);
    }
}

/// `args` as a RESP multibulk request.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}
