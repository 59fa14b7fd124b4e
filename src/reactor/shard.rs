//! One Reactor shard: an edge-triggered epoll loop that owns its listeners and connections.
//!
//! The edge-triggered rule, once: an event means "something changed"; the handler must go
//! on until the kernel says EAGAIN, or it will not hear of that socket again. Listeners:
//! accept4 until EAGAIN. Connections: read until EAGAIN, except that a read that returns
//! fewer bytes than asked means the queue was empty at that instant, so the next arrival
//! raises a new edge (nginx's ngx_unix_recv treats a short read the same way); when the
//! event carried EPOLLRDHUP the reads go on to the EOF, which raises no further edge.
//! Connections are registered once with EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET: EPOLLOUT
//! then fires only after a write hit EAGAIN (the socket sets SOCK_NOSPACE), i.e. only while
//! output is queued, and no epoll_ctl is ever needed after the accept.
//!
//! Each read lands in one buffer per shard (no buffer held by an idle connection); its reply
//! (the bytes themselves for echo, the answers for HTTP, built in a second per-shard buffer)
//! is written at once; only what the socket would not take is queued, and a connection
//! with queued output is not read until it drains, so a peer that does not read cannot grow
//! the server's memory. After an HTTP answer that ends the connection no request is read; once
//! the last byte is sent the write side is shut and what the peer still sends is read and
//! discarded until its EOF (`Linger`).
//!
//! Beyond the `--max-conns` cap (shared by the process's shards) a connection is closed as
//! soon as it is accepted. Idle and header deadlines live in one timer wheel per shard
//! (`timer::Wheel`), keyed by slot; epoll_wait returns at least once per tick while any is set.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::proto::http;
use crate::server::{Gate, ShardCtx};
use crate::stats::{Counters, SharedCounters};
use crate::sys;
use crate::timer::{Expired, Wheel};

const WAKE: u64 = u64::MAX;
/// Listener tokens count down from here; connection tokens are (generation << 32) | slot,
/// and generations stay below 2^31, so the ranges cannot meet.
const LISTENER_BASE: u64 = u64::MAX - 1;
const EVENTS: usize = 1024;
const READ_BUF: usize = 64 * 1024;
/// Grown output queues above this are dropped once drained rather than kept idle.
const KEEP_QUEUE_CAPACITY: usize = 64 * 1024;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// The lingering close after an HTTP answer that closes: send it, shut the write side, then
/// read and discard until the peer's EOF (closing with its bytes unread would reset the
/// connection, which can destroy the answer before the peer reads it); the timer wheel cuts
/// it after `cli::LINGER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    No,
    /// The closing answer is written or queued; no more requests are read.
    Owed,
    /// The answer is sent and the write side shut: reading and discarding.
    Active,
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    out: Vec<u8>,
    out_pos: usize,
    /// The peer half-closed: no more reads; close once `out` is sent.
    finishing: bool,
    /// The server is stopping: no more reads; close once `out` is sent.
    draining: bool,
    linger: Linger,
    /// The HTTP session when HTTP is served (boxed: echo connections pay one pointer); echo
    /// when None.
    http: Option<Box<http::Session>>,
}

pub struct ReactorShard {
    epoll: OwnedFd,
    listeners: Vec<OwnedFd>,
    /// Registered with the epoll set; kept open for as long as the shard runs.
    _wake: OwnedFd,
    conns: Slab<Conn>,
    buf: Box<[u8]>,
    /// HTTP: the answers to what was just read.
    answers: Vec<u8>,
    /// HTTP's limits and the Date of the current second, when HTTP is served.
    http: Option<(http::Limits, http::Date)>,
    /// The most connections this shard may hold: its share of the process's fds.
    cap: usize,
    /// A listener stopped short of EAGAIN (fd limit): retry when connections close.
    accept_pending: bool,
    next_gen: u32,
    counters: Counters,
    shared: Arc<SharedCounters>,
    shutdown_timeout: Duration,
    deadline: Option<Instant>,
    /// Idle and header deadlines, keyed by slot.
    wheel: Wheel,
    expired: Vec<(u32, Expired)>,
    gate: Option<Arc<Gate>>,
    /// `--batch-usec`: once events are there, sleep this long and gather what came meanwhile.
    batch: Option<Duration>,
}

/// Events a batched wait is content with: as many as io_uring's batched wait waits for.
const BATCH_WANT: usize = 64;

fn listener_token(l: usize) -> u64 {
    LISTENER_BASE - l as u64
}

fn is_again(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

impl ReactorShard {
    pub fn new(ctx: ShardCtx, cap: usize) -> io::Result<Self> {
        let epoll = sys::epoll_create()?;
        for (l, fd) in ctx.listeners.iter().enumerate() {
            let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
            sys::epoll_add(epoll.as_raw_fd(), fd.as_raw_fd(), ev, listener_token(l))?;
        }
        // The eventfd is level-triggered: it only ever fires once, to stop.
        sys::epoll_add(
            epoll.as_raw_fd(),
            ctx.wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE,
        )?;
        let mut counters = Counters::default();
        counters.syscalls += ctx.listeners.len() as u64 + 2;
        Ok(ReactorShard {
            epoll,
            listeners: ctx.listeners,
            _wake: ctx.wake,
            conns: Slab::with_capacity(1024),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            answers: Vec::new(),
            http: ctx.http.map(|limits| (limits, http::Date::now())),
            cap,
            accept_pending: false,
            next_gen: 0,
            counters,
            shared: ctx.counters,
            shutdown_timeout: ctx.shutdown_timeout,
            deadline: None,
            wheel: Wheel::new(ctx.timeouts, Instant::now()),
            expired: Vec::new(),
            gate: ctx.gate,
            batch: (ctx.batch_usec > 0).then(|| Duration::from_micros(ctx.batch_usec.into())),
        })
    }

    pub fn run(mut self) -> io::Result<Counters> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let now = Instant::now();
            let stop = self.deadline.map(|d| {
                d.saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), Duration::from_millis(100))
            });
            let timeout = match (stop, self.wheel.next_wake(now)) {
                (Some(a), Some(b)) => a.min(b).as_millis().max(1) as i32,
                (Some(a), None) | (None, Some(a)) => a.as_millis().max(1) as i32,
                (None, None) => -1,
            };
            self.counters.syscalls += 1;
            let mut n = sys::epoll_wait(self.epoll.as_raw_fd(), &mut events, timeout)?;
            if let Some(batch) = self.batch
                && n > 0
                && n < BATCH_WANT
            {
                // Edge-triggered: what became ready during the sleep is reported by the
                // next wait, which does not block.
                std::thread::sleep(batch);
                self.counters.syscalls += 2;
                n += sys::epoll_wait(self.epoll.as_raw_fd(), &mut events[n..], 0)?;
            }
            self.wheel.set_clock(Instant::now());
            if let Some((_, date)) = &mut self.http {
                date.refresh();
            }
            for ev in &events[..n] {
                let (flags, token) = (ev.events, ev.u64);
                match token {
                    WAKE => self.begin_stop(),
                    t if t > LISTENER_BASE - self.listeners.len().max(1) as u64
                        && t <= LISTENER_BASE =>
                    {
                        self.accept_all((LISTENER_BASE - t) as usize)?;
                    }
                    t => self.on_conn_event(t, flags),
                }
            }
            self.expire();
            if self.accept_pending && self.deadline.is_none() && self.conns.len() < self.cap {
                self.accept_pending = false;
                for l in 0..self.listeners.len() {
                    self.accept_all(l)?;
                }
            }
            if let Some(d) = self.deadline {
                if Instant::now() >= d {
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.close(k);
                    }
                }
                if self.conns.is_empty() {
                    self.shared.publish(&self.counters);
                    return Ok(self.counters);
                }
            }
            self.shared.publish(&self.counters);
        }
    }

    fn accept_all(&mut self, l: usize) -> io::Result<()> {
        let Some(listener) = self.listeners.get(l) else {
            return Ok(());
        };
        let lfd = listener.as_raw_fd();
        loop {
            if self.conns.len() >= self.cap {
                self.accept_pending = true;
                return Ok(());
            }
            self.counters.syscalls += 1;
            match sys::accept_nonblocking(lfd) {
                Ok(fd) if self.gate.as_ref().is_some_and(|g| !g.enter()) => {
                    // Over the cap: dropping `fd` closes it before a byte is read.
                    drop(fd);
                    self.counters.syscalls += 1;
                    self.counters.over_cap += 1;
                }
                Ok(fd) => {
                    self.next_gen = (self.next_gen + 1) & 0x7FFF_FFFF;
                    let entry = self.conns.vacant_entry();
                    let token = u64::from(self.next_gen) << 32 | entry.key() as u64;
                    self.counters.syscalls += 1;
                    if let Err(e) =
                        sys::epoll_add(self.epoll.as_raw_fd(), fd.as_raw_fd(), CONN_EVENTS, token)
                    {
                        // Dropping `fd` closes it: the peer sees the close.
                        self.counters.refused += 1;
                        if let Some(gate) = &self.gate {
                            gate.leave();
                        }
                        if e.raw_os_error() == Some(libc::ENOMEM)
                            || e.raw_os_error() == Some(libc::ENOSPC)
                        {
                            continue;
                        }
                        return Err(e);
                    }
                    self.wheel.start(entry.key() as u32);
                    entry.insert(Conn {
                        fd,
                        generation: self.next_gen,
                        out: Vec::new(),
                        out_pos: 0,
                        finishing: false,
                        linger: Linger::No,
                        draining: false,
                        http: self.http.is_some().then(Box::default),
                    });
                    self.counters.accepted += 1;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // That connection was reset before we took it.
                    Some(libc::ECONNABORTED) | Some(libc::EPROTO) => self.counters.refused += 1,
                    // Out of fds or memory: leave the rest in the backlog, retry on closes.
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        self.accept_pending = true;
                        return Ok(());
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    fn on_conn_event(&mut self, token: u64, flags: u32) {
        let key = (token & 0xFFFF_FFFF) as usize;
        let generation = (token >> 32) as u32;
        if self
            .conns
            .get(key)
            .is_none_or(|c| c.generation != generation)
        {
            return; // an event for a connection closed earlier in this batch
        }
        let hup = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        if flags & libc::EPOLLOUT as u32 != 0 && !self.conns[key].out.is_empty() && !self.flush(key)
        {
            return;
        }
        if flags & libc::EPOLLIN as u32 != 0 || hup {
            self.on_readable(key, hup);
        }
    }

    /// Reads and replies until EAGAIN (see the module doc), unless output is queued; in a
    /// lingering close, reads and discards.
    fn on_readable(&mut self, key: usize, to_eof: bool) {
        loop {
            if self.conns[key].linger == Linger::Owed && self.conns[key].out.is_empty() {
                self.start_linger(key);
            }
            let c = &mut self.conns[key];
            if !c.out.is_empty() || c.finishing || c.draining {
                break;
            }
            let fd = c.fd.as_raw_fd();
            self.counters.syscalls += 1;
            match sys::read(fd, &mut self.buf) {
                Ok(0) => {
                    c.finishing = true;
                    break;
                }
                Ok(n) => {
                    self.counters.recvs += 1;
                    self.counters.bytes_in += n as u64;
                    self.wheel.progress(key as u32);
                    if c.linger == Linger::No && !self.reply(key, n) {
                        return;
                    }
                    if n < self.buf.len() && !to_eof {
                        break;
                    }
                }
                Err(e) if is_again(&e) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    self.counters.conn_errors += 1;
                    self.close(key);
                    return;
                }
            }
        }
        let c = &self.conns[key];
        if c.linger == Linger::Owed && c.out.is_empty() && !c.finishing && !c.draining {
            // The closing answer went out whole just now: linger, reading what is there.
            self.start_linger(key);
            self.on_readable(key, to_eof);
        } else if c.finishing && c.out.is_empty() {
            self.close(key);
        }
    }

    /// Writes the reply to the `n` bytes just read (echo: those bytes; HTTP: the answers
    /// they complete); queues what the socket will not take. Returns false if the
    /// connection was closed.
    fn reply(&mut self, key: usize, n: usize) -> bool {
        let ReactorShard {
            conns,
            buf,
            answers,
            http,
            counters,
            wheel,
            ..
        } = self;
        let c = &mut conns[key];
        let reply: &[u8] = match (&mut c.http, http) {
            (Some(session), Some((limits, date))) => {
                answers.clear();
                let o = session.on_input(&buf[..n], limits, date, answers);
                counters.requests += u64::from(o.answers);
                if o.close {
                    c.linger = Linger::Owed;
                }
                wheel.head(key as u32, session.reading_head());
                answers
            }
            _ => &buf[..n],
        };
        if write_or_queue(c, reply, counters, wheel, key) {
            return true;
        }
        self.counters.conn_errors += 1;
        self.close(key);
        false
    }

    /// Deadlines that passed: idle connections are closed; an HTTP head that took too long
    /// is answered 408 and closed (lingering); a lingering close that ran out is cut.
    fn expire(&mut self) {
        self.wheel.expire(&mut self.expired);
        let mut expired = std::mem::take(&mut self.expired);
        for (key, why) in expired.drain(..) {
            let key = key as usize;
            debug_assert!(
                self.conns.contains(key),
                "a closed connection's timer is stopped"
            );
            if !self.conns.contains(key) {
                continue;
            }
            match why {
                Expired::Idle => self.counters.idle_timeouts += 1,
                Expired::Linger => {}
                Expired::Header => self.counters.header_timeouts += 1,
            }
            if why != Expired::Header {
                self.close(key);
                continue;
            }
            let ReactorShard {
                conns,
                answers,
                http,
                counters,
                wheel,
                ..
            } = self;
            let c = &mut conns[key];
            let (Some(session), Some((_, date))) = (&mut c.http, http) else {
                self.close(key);
                continue;
            };
            answers.clear();
            session.time_out(date, answers);
            c.linger = Linger::Owed;
            wheel.linger(key as u32);
            // After what is already queued, or straight to the socket.
            let ok = if c.out.is_empty() {
                write_or_queue(c, answers, counters, wheel, key)
            } else {
                c.out.extend_from_slice(answers);
                true
            };
            if !ok {
                self.counters.conn_errors += 1;
                self.close(key);
            } else if c.out.is_empty() {
                // Shuts the write side, then drains what the peer sent meanwhile.
                self.on_readable(key, true);
            }
        }
        self.expired = expired;
    }

    /// Writes queued output until EAGAIN; when it drains, reading resumes (it stopped with
    /// bytes possibly left unread). Returns false if the connection was closed.
    fn flush(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        while c.out_pos < c.out.len() {
            self.counters.syscalls += 1;
            self.counters.sends += 1;
            match sys::write(c.fd.as_raw_fd(), &c.out[c.out_pos..]) {
                Ok(w) => {
                    self.counters.bytes_out += w as u64;
                    self.wheel.progress(key as u32);
                    c.out_pos += w;
                    if c.out_pos < c.out.len() {
                        self.counters.short_sends += 1;
                    }
                }
                Err(e) if is_again(&e) => return true,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => {
                    self.counters.conn_errors += 1;
                    self.close(key);
                    return false;
                }
            }
        }
        if c.out.capacity() > KEEP_QUEUE_CAPACITY {
            c.out = Vec::new();
        } else {
            c.out.clear();
        }
        c.out_pos = 0;
        if c.finishing || c.draining {
            self.close(key);
            return false;
        }
        // Reads resume (or, after a closing answer, the lingering close begins).
        self.on_readable(key, true);
        self.conns.contains(key)
    }

    /// Everything owed after a closing answer is sent: shut the write side and linger.
    fn start_linger(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.linger = Linger::Active;
        self.counters.syscalls += 1;
        // A peer already gone makes this fail; the reads that follow see it.
        let _ = sys::shutdown_write(c.fd.as_raw_fd());
        self.wheel.linger(key as u32);
    }

    fn close(&mut self, key: usize) {
        // Dropping the fd closes it, which also takes it out of the epoll set.
        drop(self.conns.remove(key));
        self.wheel.stop(key as u32);
        if let Some(gate) = &self.gate {
            gate.leave();
        }
        self.counters.syscalls += 1;
        self.counters.closed += 1;
    }

    fn begin_stop(&mut self) {
        if self.deadline.is_some() {
            return;
        }
        self.deadline = Some(Instant::now() + self.shutdown_timeout);
        // Closing the listeners refuses new connections (and resets those in the backlog).
        self.counters.syscalls += self.listeners.len() as u64;
        self.listeners.clear();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in keys {
            let c = &mut self.conns[k];
            c.draining = true;
            if c.out.is_empty() {
                self.close(k);
            }
        }
    }
}

/// Writes `bytes` to `c` until the socket will take no more and queues the rest; false on a
/// write error (the caller closes).
fn write_or_queue(
    c: &mut Conn,
    bytes: &[u8],
    counters: &mut Counters,
    wheel: &mut Wheel,
    key: usize,
) -> bool {
    let mut done = 0;
    while done < bytes.len() {
        counters.syscalls += 1;
        counters.sends += 1;
        match sys::write(c.fd.as_raw_fd(), &bytes[done..]) {
            Ok(w) => {
                counters.bytes_out += w as u64;
                wheel.progress(key as u32);
                done += w;
                if done < bytes.len() {
                    counters.short_sends += 1;
                }
            }
            Err(e) if is_again(&e) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return false,
        }
    }
    c.out.extend_from_slice(&bytes[done..]);
    true
}
