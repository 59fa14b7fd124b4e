//! The one keyspace of a server, shared by all its shards (threads): keys spread over
//! stripes, each behind its own lock, so commands on different keys seldom meet. And the
//! journal: the append-only file's records, appended while the key's lock is held, so the
//! file's order is the order in which commands on a key ran.
//!
//! Keys with a TTL are listed per stripe in no order, as Redis's `expires` dict is, and the
//! active sweep walks that list a bounded stretch at a time. A SET with a TTL of a key that
//! has one (a heartbeat's write) then only changes the entry's deadline: an ordered index
//! took a removal and an insertion, each with a copy of the key, and at 200,000 connections
//! was 6 % of the server's CPU (bench/results/README.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::command::{self, Client};
use super::resp::{self, Args, Parsed};
use crate::proto::digits;

/// How a keyspace is set up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// `--maxmemory`: over it, commands that may grow memory are refused (noeviction).
    pub maxmemory: Option<u64>,
    /// Write commands are journaled (`--appendonly`).
    pub journal: bool,
}

/// Stripes: with 256, two shards seldom want the same lock at once.
const STRIPES: usize = 256;
/// The memory estimate's cost of a key beyond its bytes (the map's slot, the headers).
const KEY_COST: i64 = 64;
/// The cost of one element of a list, set, hash or sorted set beyond its bytes.
pub(super) const ELEMENT_COST: i64 = 32;
/// Active expiry's bound per `sweep` call: keys with a TTL looked at, all stripes together,
/// and per stripe visited (Redis samples 20 keys a round).
const SWEEP_MAX: u32 = 1000;
const SWEEP_STRIPE: u32 = 20;

/// A small hash keeps its insertion order, as Redis 7.0's listpack encoding does, up to
/// hash-max-listpack-entries (128) fields of at most hash-max-listpack-value (64) bytes.
pub(super) const HASH_SMALL_ENTRIES: usize = 128;
pub(super) const HASH_SMALL_VALUE: usize = 64;
/// A set of integers only is kept sorted, as Redis 7.0's intset, up to
/// set-max-intset-entries (512).
pub(super) const INTSET_ENTRIES: usize = 512;

#[derive(Debug)]
pub(super) enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Hash(Hash),
    Set(Set),
    Zset(Zset),
}

#[derive(Debug)]
pub(super) enum Hash {
    /// In insertion order.
    Small(Vec<(Vec<u8>, Vec<u8>)>),
    /// Redis's hash table has no defined order; ordered here, so that replies depend only
    /// on the commands run.
    Big(BTreeMap<Vec<u8>, Vec<u8>>),
}

#[derive(Debug, Default)]
pub(super) struct Set {
    /// Ordered, as `Hash::Big`.
    pub members: BTreeSet<Vec<u8>>,
    /// Redis would hold it as an intset: replies list it in numeric order. Once false, for
    /// good (Redis never converts back).
    pub intset: bool,
}

/// A sorted set: scores by member, and (score, member) in order.
#[derive(Debug, Default)]
pub(super) struct Zset {
    pub scores: HashMap<Vec<u8>, f64>,
    pub order: BTreeSet<(Score, Vec<u8>)>,
}

/// A score ordered as Redis orders them (never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Score(pub f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Score {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

impl Value {
    /// The memory estimate of the value; O(elements), so only when a value comes or goes.
    pub(super) fn cost(&self) -> i64 {
        let each = |n: usize| n as i64 + ELEMENT_COST;
        match self {
            Value::Str(s) => s.len() as i64,
            Value::List(l) => l.iter().map(|e| each(e.len())).sum(),
            Value::Hash(Hash::Small(v)) => v.iter().map(|(f, x)| each(f.len() + x.len())).sum(),
            Value::Hash(Hash::Big(m)) => m.iter().map(|(f, x)| each(f.len() + x.len())).sum(),
            Value::Set(s) => s.members.iter().map(|m| each(m.len())).sum(),
            Value::Zset(z) => z.scores.keys().map(|m| 2 * each(m.len())).sum(),
        }
    }

    /// An empty collection is no key (Redis deletes it).
    fn is_empty(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Hash(Hash::Small(v)) => v.is_empty(),
            Value::Hash(Hash::Big(m)) => m.is_empty(),
            Value::Set(s) => s.members.is_empty(),
            Value::Zset(z) => z.scores.is_empty(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Entry {
    pub value: Value,
    /// Unix ms after which the key is gone.
    expire: Option<u64>,
    /// With a TTL, where the key is in its stripe's `volatile`.
    volatile: u32,
}

impl Entry {
    pub fn expire(&self) -> Option<u64> {
        self.expire
    }
}

/// One stripe's keys, and those with a TTL (for active expiry).
#[derive(Debug, Default)]
pub(super) struct Stripe {
    map: HashMap<Vec<u8>, Entry>,
    /// The keys whose entry has a TTL, in no order; each entry knows its place.
    volatile: Vec<Vec<u8>>,
    /// Where the next sweep of this stripe looks first.
    cursor: usize,
}

impl Stripe {
    /// Removes `key`; its cost.
    fn remove(&mut self, key: &[u8]) -> Option<(Entry, i64)> {
        let e = self.map.remove(key)?;
        if e.expire.is_some() {
            self.untrack(e.volatile as usize);
        }
        let cost = KEY_COST + key.len() as i64 + e.value.cost();
        Some((e, cost))
    }

    /// Takes place `at` out of `volatile`; the key moved into it learns its new place. The
    /// key that was there.
    fn untrack(&mut self, at: usize) -> Vec<u8> {
        let key = self.volatile.swap_remove(at);
        if let Some(moved) = self.volatile.get(at)
            && let Some(e) = self.map.get_mut(moved)
        {
            e.volatile = at as u32;
        }
        key
    }

    /// Sets the TTL of `key`, which is here, keeping `volatile` in step.
    fn set_expire(&mut self, key: &[u8], expire: Option<u64>) {
        let Some(e) = self.map.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut e.expire, expire);
        match (old, expire) {
            (None, Some(_)) => {
                e.volatile = self.volatile.len() as u32;
                self.volatile.push(key.to_vec());
            }
            (Some(_), None) => {
                let at = e.volatile as usize;
                self.untrack(at);
            }
            _ => {}
        }
    }

    /// Looks at up to `budget` keys with a TTL from the cursor on, removing the expired:
    /// (looked at, removed, their cost).
    fn sweep(&mut self, now: u64, budget: u32) -> (u32, u32, i64) {
        let (mut looked, mut removed, mut cost) = (0, 0, 0);
        while looked < budget && !self.volatile.is_empty() {
            if self.cursor >= self.volatile.len() {
                self.cursor = 0;
            }
            looked += 1;
            let gone = self
                .map
                .get(&self.volatile[self.cursor])
                .is_none_or(|e| e.expire.is_none_or(|t| expired(t, now)));
            if !gone {
                self.cursor += 1;
                continue;
            }
            // The last key moves into the cursor's place, and is looked at next.
            let key = self.untrack(self.cursor);
            if let Some(e) = self.map.remove(&key) {
                cost += KEY_COST + key.len() as i64 + e.value.cost();
                removed += 1;
            }
        }
        (looked, removed, cost)
    }
}

#[derive(Debug)]
pub struct Keyspace {
    stripes: Box<[Mutex<Stripe>]>,
    journal: Option<Journal>,
    maxmemory: Option<u64>,
    /// The memory estimate, bytes.
    used: AtomicI64,
    /// The stripe the next sweep starts at.
    sweep_at: AtomicUsize,
    /// When the last sweep began (unix ms): `sweep_due` lets one shard a period sweep.
    swept_ms: AtomicU64,
}

/// A key whose deadline is `t` is gone at `now` once now is past it (Redis's keyIsExpired:
/// `now > when`).
fn expired(t: u64, now: u64) -> bool {
    now > t
}

fn lock(m: &Mutex<Stripe>) -> MutexGuard<'_, Stripe> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn stripe_of(key: &[u8]) -> usize {
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

impl Keyspace {
    pub fn new(config: Config) -> Keyspace {
        Keyspace {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            journal: config.journal.then(Journal::default),
            maxmemory: config.maxmemory,
            used: AtomicI64::new(0),
            sweep_at: AtomicUsize::new(0),
            swept_ms: AtomicU64::new(0),
        }
    }

    /// Whether the caller should `sweep` now: `every_ms` have passed since the last sweep
    /// began; of the shards that ask at once, one is told so. The server sweeps at Redis's
    /// rate (hz 10), however many shards it has.
    pub fn sweep_due(&self, now_ms: u64, every_ms: u64) -> bool {
        let last = self.swept_ms.load(Ordering::Relaxed);
        now_ms >= last + every_ms
            && self
                .swept_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The memory estimate: keys, values, and a per key and per element overhead.
    pub fn used_memory(&self) -> u64 {
        self.used.load(Ordering::Relaxed).max(0) as u64
    }

    pub(super) fn maxmemory(&self) -> Option<u64> {
        self.maxmemory
    }

    /// Over `maxmemory`: commands that may grow memory are refused.
    pub(super) fn over_maxmemory(&self) -> bool {
        self.maxmemory.is_some_and(|m| self.used_memory() > m)
    }

    /// Locks the stripe of `key`. `journal`: the commands run are journaled (not on replay).
    pub(super) fn lock_key(&self, key: &[u8], now_ms: u64, journal: bool) -> Locked<'_> {
        let i = stripe_of(key);
        self.locked(Guards::One(i, lock(&self.stripes[i])), now_ms, journal)
    }

    /// Locks the stripes of all `keys`, in ascending order (so two never deadlock).
    pub(super) fn lock_keys(&self, keys: &[&[u8]], now_ms: u64, journal: bool) -> Locked<'_> {
        let mut idx: Vec<usize> = keys.iter().map(|k| stripe_of(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let guards = Guards::Many(
            idx.into_iter()
                .map(|i| (i, lock(&self.stripes[i])))
                .collect(),
        );
        self.locked(guards, now_ms, journal)
    }

    /// Locks every stripe, in order.
    pub(super) fn lock_all(&self, now_ms: u64, journal: bool) -> Locked<'_> {
        let guards = Guards::Many((0..STRIPES).map(|i| (i, lock(&self.stripes[i]))).collect());
        self.locked(guards, now_ms, journal)
    }

    fn locked<'a>(&'a self, guards: Guards<'a>, now_ms: u64, journal: bool) -> Locked<'a> {
        Locked {
            ks: self,
            guards,
            now_ms,
            journal: if journal { self.journal.as_ref() } else { None },
            delta: 0,
            lsn: None,
        }
    }

    /// Active expiry: looks at keys with a TTL, at most `SWEEP_MAX` a call and
    /// `SWEEP_STRIPE` per stripe, each stripe from where its last look stopped, the stripes
    /// from where the last call stopped; removes the expired ones (never a scan of all the
    /// keys). How many it removed.
    pub fn sweep(&self, now_ms: u64) -> u32 {
        let (mut looked, mut removed) = (0, 0);
        let first = self.sweep_at.load(Ordering::Relaxed);
        for n in 0..STRIPES {
            let i = (first + n) % STRIPES;
            let budget = SWEEP_STRIPE.min(SWEEP_MAX - looked);
            let (l, r, cost) = lock(&self.stripes[i]).sweep(now_ms, budget);
            self.used.fetch_sub(cost, Ordering::Relaxed);
            looked += l;
            removed += r;
            if looked >= SWEEP_MAX {
                self.sweep_at.store((i + 1) % STRIPES, Ordering::Relaxed);
                break;
            }
        }
        removed
    }

    /// Keys held (some may have expired and not yet be removed, as Redis's DBSIZE counts).
    pub fn len(&self) -> u64 {
        self.stripes.iter().map(|s| lock(s).map.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the commands of an append-only file's contents, as at start: none is journaled
    /// again, nor refused for memory.
    pub fn replay(&self, bytes: &[u8], now_ms: u64) -> Replay {
        let env = super::Env {
            keyspace: self,
            limits: super::Limits::default(),
            now_ms,
            now: std::time::Instant::now(),
        };
        let mut client = Client::default();
        let (mut commands, mut at, mut out) = (0, 0, Vec::new());
        let mut args = Args::default();
        loop {
            out.clear();
            match resp::parse(&bytes[at..], &env.limits, &mut args) {
                Parsed::Multibulk(used) => {
                    command::run(args.as_slice(), &env, &mut client, false, &mut out);
                    at += used;
                }
                Parsed::Inline(used, words) => {
                    let refs: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
                    command::run(&refs, &env, &mut client, false, &mut out);
                    at += used;
                }
                Parsed::Partial(used, _) => {
                    return Replay {
                        commands,
                        valid: at + used,
                        error: None,
                    };
                }
                Parsed::Error(e) => {
                    return Replay {
                        commands,
                        valid: at,
                        error: Some(e.to_string()),
                    };
                }
            }
            commands += 1;
        }
    }
}

/// The stripes a command holds, by index: one (most commands: no allocation) or several.
enum Guards<'a> {
    One(usize, MutexGuard<'a, Stripe>),
    Many(Vec<(usize, MutexGuard<'a, Stripe>)>),
}

impl<'a> Guards<'a> {
    fn iter(&self) -> impl Iterator<Item = (usize, &Stripe)> {
        let (one, many) = match self {
            Guards::One(i, g) => (Some((*i, &**g)), &[][..]),
            Guards::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().map(|(i, g)| (*i, &**g)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Stripe)> {
        let (one, many) = match self {
            Guards::One(i, g) => (Some((*i, &mut **g)), &mut [][..]),
            Guards::Many(v) => (None, &mut v[..]),
        };
        one.into_iter()
            .chain(many.iter_mut().map(|(i, g)| (*i, &mut **g)))
    }
}

/// Stripes locked for one command: its keys' entries, lazily expired; the memory it took
/// or freed (settled when it ends); and the journal record it appended.
pub(super) struct Locked<'a> {
    ks: &'a Keyspace,
    guards: Guards<'a>,
    now_ms: u64,
    journal: Option<&'a Journal>,
    delta: i64,
    /// The position after the record appended, if one was.
    pub lsn: Option<u64>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.ks.used.fetch_add(self.delta, Ordering::Relaxed);
    }
}

impl Locked<'_> {
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn stripe(&mut self, key: &[u8]) -> &mut Stripe {
        let i = stripe_of(key);
        let g = self.guards.iter_mut().find(|(j, _)| *j == i);
        g.expect("the command locked its keys' stripes").1
    }

    /// The live entry of `key`: an expired one is removed first (lazy expiry).
    pub fn get(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let now = self.now_ms;
        let s = self.stripe(key);
        let expired = s.map.get(key)?.expire.is_some_and(|t| expired(t, now));
        if expired {
            let cost = s.remove(key).map_or(0, |(_, c)| c);
            self.delta -= cost;
            return None;
        }
        self.stripe(key).map.get_mut(key)
    }

    /// Sets `key` to `value`, replacing what it held; with `expire`, or without a TTL. A key
    /// that is there keeps its place (its entry is changed in place).
    pub fn insert(&mut self, key: &[u8], value: Value, expire: Option<u64>) {
        let cost = value.cost();
        let s = self.stripe(key);
        let delta = match s.map.get_mut(key) {
            Some(e) => cost - std::mem::replace(&mut e.value, value).cost(),
            None => {
                let e = Entry {
                    value,
                    expire: None,
                    volatile: 0,
                };
                s.map.insert(key.to_vec(), e);
                KEY_COST + key.len() as i64 + cost
            }
        };
        s.set_expire(key, expire);
        self.delta += delta;
    }

    /// Removes `key`; whether it was there, live.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let now = self.now_ms;
        let Some((e, cost)) = self.stripe(key).remove(key) else {
            return false;
        };
        self.delta -= cost;
        e.expire.is_none_or(|t| !expired(t, now))
    }

    /// Sets or clears the TTL of the live `key`.
    pub fn set_expire(&mut self, key: &[u8], expire: Option<u64>) {
        self.stripe(key).set_expire(key, expire);
    }

    /// Removes `key` if it is an empty collection (after a pop or a removal).
    pub fn drop_if_empty(&mut self, key: &[u8]) {
        if self
            .stripe(key)
            .map
            .get(key)
            .is_some_and(|e| e.value.is_empty())
        {
            self.remove(key);
        }
    }

    /// Memory the command took (or, negative, freed) in place.
    pub fn charge(&mut self, bytes: i64) {
        self.delta += bytes;
    }

    /// Journals the command `args` (it changed the keyspace), under the locks.
    pub fn log(&mut self, args: &[&[u8]]) {
        if let Some(j) = self.journal {
            self.lsn = Some(j.append(args));
        }
    }

    /// All keys (every stripe is locked), and how many have a TTL.
    pub fn count(&self) -> (u64, u64) {
        self.guards.iter().fold((0, 0), |(k, t), (_, s)| {
            (k + s.map.len() as u64, t + s.volatile.len() as u64)
        })
    }

    /// Empties every stripe (all are locked).
    pub fn clear(&mut self) {
        for (_, s) in self.guards.iter_mut() {
            for (k, e) in s.map.drain() {
                self.delta -= KEY_COST + k.len() as i64 + e.value.cost();
            }
            s.volatile.clear();
            s.cursor = 0;
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
    out.push(b'*');
    digits::push(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        digits::push(out, a.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}
