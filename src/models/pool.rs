//! What the three thread-pool models (`half-sync-half-reactor`, `leader-followers`,
//! `sim-proactor`) share: their epoll tokens and the connection slab behind them, the
//! workers' queue, the mailbox back to an epoll thread, and accepting, arming and closing
//! as `Ctx` counts them.
//!
//! The readiness rule, for all three: a connection is registered EPOLLONESHOT. An event
//! disarms it, and whoever then holds the connection serves one read or one write's worth
//! and re-arms it (epoll_ctl MOD) for the one operation it waits for next, or closes it. So
//! no two threads ever serve one connection at once, and its bytes stay in order. A re-armed
//! connection that is still ready fires again at once (MOD re-checks readiness), so nothing
//! has to be drained to EAGAIN as edge-triggered epoll needs. The listeners and the model's
//! own eventfds are level-triggered (leader-followers makes its listeners and its stop fd
//! ONESHOT too: several threads wait on its set).
//!
//! A token is a slab index and its generation: a late event for a closed connection, whose
//! slot (and fd number) a new one may already have, finds the generation changed and is
//! ignored. The model's own fds have the top bit set, which no connection's token has.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Scope, ScopedJoinHandle};

use super::Ctx;
use super::echo::{self, Step};
use super::stats::Stats;
use crate::sys;

/// A connection armed for one read.
pub const READ: u32 = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;
/// A connection armed for one write: output is owed, and nothing more is read until it
/// has gone, so what a connection holds is bounded by one read.
pub const WRITE: u32 = (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32;

/// Set in the tokens of the model's own fds, clear in every connection's.
const RESERVED: u64 = 1 << 63;
/// The stop eventfd (`Stop::fd`).
pub const STOP: u64 = RESERVED;
/// The model's own eventfd: a mailbox's, or leader-followers' end.
pub const WAKE: u64 = RESERVED + 1;
/// Listener `i` is `LISTENER + i`.
const LISTENER: u64 = RESERVED + 2;
/// Generations wrap within 31 bits, so a connection's token never has the top bit.
const GENERATIONS: u32 = u32::MAX >> 1;

/// A connection's slot in a `Slab` and the generation it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    idx: u32,
    generation: u32,
}

impl Key {
    /// The epoll token of this connection.
    pub fn token(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.idx)
    }
}

/// What an epoll event is for, decoded in this one place.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    Stop,
    Wake,
    Listener(usize),
    Conn(Key),
}

impl Token {
    pub fn of(raw: u64) -> Token {
        match raw {
            STOP => Token::Stop,
            WAKE => Token::Wake,
            r if r & RESERVED != 0 => Token::Listener((r - LISTENER) as usize),
            r => Token::Conn(Key {
                idx: r as u32,
                generation: (r >> 32) as u32,
            }),
        }
    }
}

pub fn listener_token(i: usize) -> u64 {
    LISTENER + i as u64
}

/// Connections by `Key`: a freed slot is reused with the next generation.
pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub fn new() -> Slab<T> {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            let slot = &mut self.slots[idx as usize];
            slot.1 = Some(value);
            return Key {
                idx,
                generation: slot.0,
            };
        }
        // A slot per connection: fewer than RLIMIT_NOFILE, far below 2^32.
        let idx = u32::try_from(self.slots.len()).expect("fewer than 2^32 connections");
        self.slots.push((0, Some(value)));
        Key { idx, generation: 0 }
    }

    /// The connection of `key`; None if it has closed (a late event).
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.idx as usize) {
            Some((generation, value)) if *generation == key.generation => value.as_mut(),
            _ => None,
        }
    }

    pub fn remove(&mut self, key: Key) -> Option<T> {
        let (generation, value) = self.slots.get_mut(key.idx as usize)?;
        if *generation != key.generation || value.is_none() {
            return None;
        }
        *generation = generation.wrapping_add(1) & GENERATIONS;
        self.free.push(key.idx);
        self.len -= 1;
        value.take()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(idx, (g, v))| {
            v.as_ref().map(|v| {
                let key = Key {
                    idx: idx as u32,
                    generation: *g,
                };
                (key, v)
            })
        })
    }
}

/// A lock that a panicking thread cannot make unusable for the others.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The workers' queue: a mutex over a deque, and a condition variable the idle workers
/// sleep on. Its futex calls are counted where std makes one: a wait, and a notify, made
/// only when a worker is asleep (a contended lock's futex calls are not seen here).
pub struct Queue<T> {
    state: Mutex<QueueState<T>>,
    ready: Condvar,
}

struct QueueState<T> {
    items: VecDeque<T>,
    /// Workers asleep in `pop`.
    asleep: usize,
    closed: bool,
}

impl<T> Queue<T> {
    pub fn new() -> Queue<T> {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                asleep: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    pub fn push(&self, item: T, stats: &Stats) {
        let wake = {
            let mut s = lock(&self.state);
            s.items.push_back(item);
            s.asleep > 0
        };
        if wake {
            stats.call();
            self.ready.notify_one();
        }
    }

    /// The next item, waiting for one; None once the queue is closed and empty.
    pub fn pop(&self, stats: &Stats) -> Option<T> {
        let mut s = lock(&self.state);
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s.asleep += 1;
            stats.call();
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.asleep -= 1;
        }
    }

    /// Closes the queue when the guard drops: the workers finish what is queued, then end,
    /// however the loop feeding them ends (an error or a panic included).
    pub fn closing<'a>(&'a self, stats: &'a Stats) -> Closing<'a, T> {
        Closing { queue: self, stats }
    }
}

pub struct Closing<'a, T> {
    queue: &'a Queue<T>,
    stats: &'a Stats,
}

impl<T> Drop for Closing<'_, T> {
    fn drop(&mut self) {
        let wake = {
            let mut s = lock(&self.queue.state);
            s.closed = true;
            s.asleep > 0
        };
        if wake {
            self.stats.call();
            self.queue.ready.notify_all();
        }
    }
}

/// What workers post back to an epoll thread: a list under a mutex, and an eventfd in the
/// thread's epoll set that the post which finds the list empty makes readable (the later
/// ones find the wake already pending).
pub struct Mailbox<T> {
    items: Mutex<Vec<T>>,
    wake: OwnedFd,
}

impl<T> Mailbox<T> {
    pub fn new(stats: &Stats) -> io::Result<Mailbox<T>> {
        stats.call();
        Ok(Mailbox {
            items: Mutex::new(Vec::new()),
            wake: sys::eventfd()?,
        })
    }

    /// The eventfd to register (level-triggered, token `WAKE`).
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    pub fn post(&self, item: T, stats: &Stats) {
        let first = {
            let mut items = lock(&self.items);
            items.push(item);
            items.len() == 1
        };
        if first {
            stats.call();
            // Fails only if the counter would pass 2^64 - 2, when it is readable anyway.
            let _ = sys::eventfd_wake(self.fd());
        }
    }

    /// Everything posted. The eventfd is read (reset) first, so a post that comes after the
    /// take makes it readable again.
    pub fn take(&self, stats: &Stats) -> Vec<T> {
        stats.call();
        // EAGAIN: a wake that a post made after an earlier take had emptied the list.
        let _ = sys::read(self.fd(), &mut [0; 8]);
        std::mem::take(&mut *lock(&self.items))
    }
}

/// epoll_ctl ADD, counted.
pub fn add(stats: &Stats, epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    stats.call();
    sys::epoll_add(epfd, fd, events, token)
}

/// epoll_ctl MOD, counted: re-arms a ONESHOT fd.
pub fn arm(stats: &Stats, epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    stats.call();
    sys::epoll_modify(epfd, fd, events, token)
}

/// Adds the stop eventfd and every listener to `epfd`, with `events`.
pub fn register(ctx: &Ctx, epfd: RawFd, events: u32) -> io::Result<()> {
    add(&ctx.stats, epfd, ctx.stop.fd(), events, STOP)?;
    for (i, l) in ctx.listeners.iter().enumerate() {
        add(&ctx.stats, epfd, l.as_raw_fd(), events, listener_token(i))?;
    }
    Ok(())
}

/// At the stop: takes the stop eventfd (readable from now on) and the listeners out of
/// `epfd`, so that level-triggered they do not fire again and again.
pub fn unregister(ctx: &Ctx, epfd: RawFd) -> io::Result<()> {
    let fds = std::iter::once(ctx.stop.fd()).chain(ctx.listeners.iter().map(|l| l.as_raw_fd()));
    for fd in fds {
        ctx.stats.call();
        sys::epoll_delete(epfd, fd)?;
    }
    Ok(())
}

/// What one accept on a non-blocking listener gave.
pub enum Accepted {
    /// A connection, admitted.
    Conn(OwnedFd),
    /// Over `--max-conns`: closed (and counted) at once. Accept the next.
    Dropped,
    /// No more for now: EAGAIN, or an error counted as refused (EMFILE would only repeat:
    /// wait for the next readiness).
    Drained,
}

/// Accepts one connection, counted as `Ctx` says; errors that are not refusals return.
pub fn accept(ctx: &Ctx, listener: RawFd) -> io::Result<Accepted> {
    loop {
        ctx.stats.call();
        match sys::accept_nonblocking(listener) {
            Ok(conn) if ctx.admit() => return Ok(Accepted::Conn(conn)),
            Ok(conn) => {
                ctx.stats.call();
                drop(conn);
                return Ok(Accepted::Dropped);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                ctx.accept_failed(e)?;
                return Ok(Accepted::Drained);
            }
        }
    }
}

/// Accepts from listener `i` until EAGAIN, for a model whose one epoll thread owns `conns`:
/// each connection is made by `conn` and armed for its first read.
pub fn accept_all<T: AsRawFd>(
    ctx: &Ctx,
    epfd: RawFd,
    i: usize,
    conns: &mut Slab<T>,
    conn: impl Fn(OwnedFd) -> T,
) -> io::Result<()> {
    let Some(listener) = ctx.listeners.get(i) else {
        return Ok(());
    };
    loop {
        match accept(ctx, listener.as_raw_fd())? {
            Accepted::Conn(fd) => {
                let raw = fd.as_raw_fd();
                let key = conns.insert(conn(fd));
                if let Err(e) = add(&ctx.stats, epfd, raw, READ, key.token()) {
                    settle(ctx, epfd, conns, key, Step::Close(Some(e)), false);
                }
            }
            Accepted::Dropped => {}
            Accepted::Drained => return Ok(()),
        }
    }
}

/// Closes a connection (dropping `conn` closes its fd), counted, with the error it ended in.
pub fn close<T>(ctx: &Ctx, conn: T, err: Option<io::Error>) {
    ctx.stats.call();
    drop(conn);
    ctx.closed(err.as_ref());
}

/// Carries out `step` for connection `key` of a model whose one epoll thread owns `conns`:
/// armed for one read (at the stop: closed instead) or one write, or closed.
pub fn settle<T: AsRawFd>(
    ctx: &Ctx,
    epfd: RawFd,
    conns: &mut Slab<T>,
    key: Key,
    step: Step,
    stopping: bool,
) {
    let Some(conn) = conns.get_mut(key) else {
        return;
    };
    let events = match step {
        Step::Read if !stopping => READ,
        Step::Write => WRITE,
        Step::Read => return remove_and_close(ctx, conns, key, None),
        Step::Close(e) => return remove_and_close(ctx, conns, key, e),
    };
    if let Err(e) = arm(&ctx.stats, epfd, conn.as_raw_fd(), events, key.token()) {
        remove_and_close(ctx, conns, key, Some(e));
    }
}

/// Takes connection `key` out of `conns` and closes it (nothing, if it already has).
fn remove_and_close<T>(ctx: &Ctx, conns: &mut Slab<T>, key: Key, err: Option<io::Error>) {
    if let Some(conn) = conns.remove(key) {
        close(ctx, conn, err);
    }
}

/// Writes `bytes` to non-blocking `fd` until all of it has gone or the socket takes no more
/// (EAGAIN); EINTR is retried: how many went.
pub fn write_some(fd: RawFd, bytes: &[u8], stats: &Stats) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match echo::write(fd, &bytes[sent..], stats) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Writes what `owed` holds, keeping the rest: Read once all has gone, Write if some is
/// still owed, Close on an error.
pub fn flush(fd: RawFd, owed: &mut Vec<u8>, stats: &Stats) -> Step {
    match write_some(fd, owed, stats) {
        Ok(n) => {
            owed.drain(..n);
            if owed.is_empty() {
                Step::Read
            } else {
                Step::Write
            }
        }
        Err(e) => Step::Close(Some(e)),
    }
}

/// Starts a thread of the model, with `--stack-kib` of stack, in `scope` (which joins it).
pub fn spawn<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    ctx: &Ctx,
    name: String,
    f: impl FnOnce() -> T + Send + 'scope,
) -> io::Result<ScopedJoinHandle<'scope, T>> {
    thread::Builder::new()
        .name(name)
        .stack_size(ctx.stack_bytes)
        .spawn_scoped(scope, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_has_a_new_token_and_the_old_one_finds_nothing() {
        let mut slab = Slab::new();
        let a = slab.insert("a");
        assert_eq!(slab.remove(a), Some("a"));
        assert!(slab.is_empty());
        let b = slab.insert("b");
        assert_ne!(a.token(), b.token());
        let Token::Conn(old) = Token::of(a.token()) else {
            panic!("a connection's token decodes as one")
        };
        assert_eq!(slab.get_mut(old), None);
        assert_eq!(slab.remove(old), None);
        assert_eq!(slab.get_mut(b).copied(), Some("b"));
        assert_eq!(
            slab.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(),
            [(b, "b")]
        );
    }

    #[test]
    fn tokens_decode_and_generations_never_reach_the_reserved_bit() {
        assert_eq!(Token::of(STOP), Token::Stop);
        assert_eq!(Token::of(WAKE), Token::Wake);
        assert_eq!(Token::of(listener_token(7)), Token::Listener(7));
        let mut slab = Slab::new();
        let mut key = slab.insert(());
        // Walk one slot's generation round the 31-bit wrap.
        slab.slots[0].0 = GENERATIONS;
        key.generation = GENERATIONS;
        assert_eq!(Token::of(key.token()), Token::Conn(key));
        slab.remove(key);
        let next = slab.insert(());
        assert_eq!(next.generation, 0);
        assert_eq!(next.token() & RESERVED, 0);
    }

    #[test]
    fn a_closed_queue_is_emptied_before_its_workers_end() {
        let stats = Stats::new().unwrap();
        let queue = Queue::new();
        let got = thread::scope(|s| {
            let worker = s.spawn(|| {
                let mut got = Vec::new();
                while let Some(i) = queue.pop(&stats) {
                    got.push(i);
                }
                got
            });
            let _closing = queue.closing(&stats);
            for i in 0..1000 {
                queue.push(i, &stats);
            }
            drop(_closing);
            worker.join().unwrap()
        });
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_mailbox_wakes_once_per_batch() {
        let stats = Stats::new().unwrap();
        let mailbox = Mailbox::new(&stats).unwrap();
        let mut buf = [0u8; 8];
        mailbox.post(1, &stats);
        mailbox.post(2, &stats);
        assert_eq!(sys::read(mailbox.fd(), &mut buf).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(buf), 1, "one wake for two posts");
        sys::eventfd_wake(mailbox.fd()).unwrap();
        assert_eq!(mailbox.take(&stats), [1, 2]);
        assert!(
            sys::read(mailbox.fd(), &mut buf).is_err(),
            "take read the wake"
        );
        mailbox.post(3, &stats);
        assert_eq!(mailbox.take(&stats), [3]);
    }
}
