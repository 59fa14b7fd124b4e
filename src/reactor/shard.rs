//! One Reactor shard: an edge-triggered epoll loop that owns its listeners and connections.
//! Each connection's logic is a state machine (`conn::Conn`); the shard performs the
//! syscalls it asks for and feeds their results back (`Shard::drive`) until it waits for its
//! next edge or closes. Every epoll token is a `Token`, decoded in one place (`Shard::run`).
//!
//! The edge-triggered rule, once: an event means "something changed"; the handler must go
//! on until the kernel says EAGAIN, or it will not hear of that socket again. Listeners:
//! accept4 until EAGAIN. Connections: read until EAGAIN, except that a read that returns
//! fewer bytes than asked means the queue was empty at that instant, so the next arrival
//! raises a new edge (nginx's ngx_unix_recv treats a short read the same way); when the
//! event carried EPOLLRDHUP the reads go on to the EOF, which raises no further edge, and so
//! do the reads that resume after reading was stopped (the edges of what arrived meanwhile
//! were taken then). Connections are registered once with EPOLLIN | EPOLLOUT | EPOLLRDHUP |
//! EPOLLET: EPOLLOUT then fires only after a write hit EAGAIN (the socket sets
//! SOCK_NOSPACE), i.e. only while output is queued, and no epoll_ctl is ever needed after
//! the accept. A syscall interrupted by a signal (EINTR) is made again; an event whose token
//! does not decode, or names a connection closed earlier in its batch, is ignored.
//!
//! Each read lands in one buffer per shard (no buffer held by an idle connection) and HTTP's
//! answers to it in a second one; the reply is written from there (see `conn`).
//!
//! Redis in a worker process: the connections are proxied (`Conn::proxied`) to the keyspace
//! owner over the shard's link (`link::Wire`, token `Token::Link`). What they read is
//! framed into the link's output, written once at the end of the turn; its replies are
//! decoded from the link as they come and handed to their connections. While the link's
//! output is above its bound, connections that would read are noted (`paused`) and read
//! again once it is written.
//!
//! Beyond the `--max-conns` cap (shared by the process's shards) a connection is closed as
//! soon as it is accepted. Idle and header deadlines live in one timer wheel per shard
//! (`timer::Wheel`), keyed by slot; epoll_wait returns at least once per tick while any is set.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{Bufs, Conn, Effects, Op};
use super::frame::{self, Frame};
use super::link::{self, Wire};
use super::log::ShardLog;
use std::sync::Arc;

use crate::proto::redis::Journal;
use crate::server::ShardCtx;
use crate::server::access::{ConnLog, Pending};
use crate::server::aof::Aof;
use crate::server::core::{BATCH_WANT, ProtoEnv, ShardCore};
use crate::stats::Counters;
use crate::sys;
use crate::timer::{Expired, Wheel};

const EVENTS: usize = 1024;
const READ_BUF: usize = 64 * 1024;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

/// What an epoll event is for, as its 64-bit token says. The wake eventfd and the listeners
/// have reserved values with bit 63 set; a connection is its slot and a generation, so that
/// an event for a closed connection can never touch the slot's next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The shard's wake eventfd: stop.
    Wake,
    /// The shard's listener of this index.
    Listener(u32),
    /// A Redis worker's link to the keyspace owner.
    Link,
    Conn {
        slot: u32,
        generation: u32,
    },
}

/// Generations wrap within 31 bits, which keeps bit 63 clear in every connection's token.
pub const GEN_MASK: u32 = 0x7FFF_FFFF;
const RESERVED: u64 = 1 << 63;
const WAKE: u64 = u64::MAX;
const LINK: u64 = u64::MAX - 1;

impl Token {
    pub fn encode(self) -> u64 {
        match self {
            Token::Wake => WAKE,
            Token::Link => LINK,
            Token::Listener(l) => RESERVED | u64::from(l),
            Token::Conn { slot, generation } => {
                u64::from(generation & GEN_MASK) << 32 | u64::from(slot)
            }
        }
    }

    /// None for a value no `encode` gives.
    pub fn decode(v: u64) -> Option<Token> {
        match v {
            WAKE => Some(Token::Wake),
            LINK => Some(Token::Link),
            _ if v & RESERVED == 0 => Some(Token::Conn {
                slot: v as u32,
                generation: (v >> 32) as u32,
            }),
            _ if v >> 32 == RESERVED >> 32 => Some(Token::Listener(v as u32)),
            _ => None,
        }
    }
}

/// A connection: its socket, the generation in its token, its state.
struct Entry {
    fd: OwnedFd,
    generation: u32,
    conn: Conn,
    /// Its access log figures, when logging.
    log: Option<Box<ConnLog>>,
}

pub struct Shard {
    core: ShardCore,
    epoll: OwnedFd,
    listeners: Vec<OwnedFd>,
    /// Registered with the epoll set; kept open for as long as the shard runs.
    _wake: OwnedFd,
    conns: Slab<Entry>,
    buf: Box<[u8]>,
    /// HTTP: the answers to what was just read.
    answers: Vec<u8>,
    /// The most connections this shard may hold: its share of the process's fds.
    cap: usize,
    /// A listener stopped short of EAGAIN (fd limit): retry when connections close.
    accept_pending: bool,
    next_gen: u32,
    /// `--batch-usec`: once events are there, sleep this long and gather what came meanwhile.
    batch: Option<Duration>,
    /// `--access-log`.
    log: Option<ShardLog>,
    /// Redis's `--appendonly`.
    aof: Option<Arc<Aof>>,
    /// Connections (slot, generation) whose replies wait for this turn's fdatasync.
    held: Vec<(usize, u32)>,
    /// A Redis worker's link to the keyspace owner: its connections are proxied.
    link: Option<Wire>,
    /// Connections (slot, generation) that would read while the link's output was above
    /// its bound.
    paused: Vec<(usize, u32)>,
}

/// The journal of the keyspace a shard with an append-only file serves.
pub(super) fn journal(proto: &Option<ProtoEnv>) -> &Journal {
    proto
        .as_ref()
        .and_then(|p| p.redis.as_ref())
        .and_then(|r| r.keyspace.journal())
        .expect("a shard with an append-only file serves a keyspace with a journal")
}

fn is_again(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

fn is_intr(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINTR)
}

/// Applies connection `slot`'s counters and timer changes.
fn apply(slot: usize, fx: Effects, counters: &mut Counters, wheel: &mut Wheel) {
    let key = slot as u32;
    if fx.received {
        wheel.received(key);
    }
    if fx.sent {
        wheel.sent(key);
    }
    if let Some(owed) = fx.owed {
        wheel.owed(key, owed);
        if owed {
            counters.output_owed += 1;
        } else {
            counters.output_owed -= 1;
        }
    }
    if let Some(part) = fx.reading {
        wheel.reading(key, part);
    }
    if fx.linger {
        wheel.linger(key);
    }
    counters.requests += u64::from(fx.answered);
    counters.short_sends += u64::from(fx.short_send);
    counters.conn_errors += u64::from(fx.failed);
}

impl Shard {
    /// A shard holding at most `cap` connections; a Redis worker's connects to the
    /// keyspace owner listening on `owner`.
    pub fn new(ctx: ShardCtx, cap: usize, owner: Option<&str>) -> io::Result<Self> {
        let epoll = sys::epoll_create()?;
        let link = match owner {
            Some(name) => {
                let fd = link::connect(name).map_err(|e| {
                    io::Error::new(e.kind(), format!("connecting to the keyspace owner: {e}"))
                })?;
                sys::epoll_add(
                    epoll.as_raw_fd(),
                    fd.as_raw_fd(),
                    CONN_EVENTS,
                    Token::Link.encode(),
                )?;
                Some(Wire::new(fd))
            }
            None => None,
        };
        for (l, fd) in ctx.listeners.iter().enumerate() {
            let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
            let token = Token::Listener(l as u32).encode();
            sys::epoll_add(epoll.as_raw_fd(), fd.as_raw_fd(), ev, token)?;
        }
        // The eventfd is level-triggered: it only ever fires once, to stop.
        sys::epoll_add(
            epoll.as_raw_fd(),
            ctx.wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::Wake.encode(),
        )?;
        let mut core = ShardCore::new(&ctx);
        core.counters.syscalls += ctx.listeners.len() as u64 + 2;
        Ok(Shard {
            core,
            epoll,
            listeners: ctx.listeners,
            _wake: ctx.wake,
            conns: Slab::with_capacity(1024),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            answers: Vec::new(),
            cap,
            accept_pending: false,
            next_gen: 0,
            batch: (ctx.batch_usec > 0).then(|| Duration::from_micros(ctx.batch_usec.into())),
            log: ctx
                .log
                .map(|(file, cap, fsync)| ShardLog::new(Pending::new(file, cap, fsync))),
            aof: ctx.redis.as_ref().and_then(|r| r.aof.clone()),
            held: Vec::new(),
            link,
            paused: Vec::new(),
        })
    }

    pub fn run(mut self) -> io::Result<Counters> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let now = Instant::now();
            let wait = match (
                self.core.wait_timeout(now),
                self.log.as_ref().and_then(|l| l.wait(now)),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match wait {
                // Replies wait for the journal's sync at the end of the turn: no waiting.
                _ if !self.held.is_empty() => 0,
                // epoll_wait counts whole milliseconds: round up, never a busy 0.
                Some(t) => t.as_micros().div_ceil(1000).max(1) as i32,
                None => -1,
            };
            self.core.counters.syscalls += 1;
            let mut n = sys::epoll_wait(self.epoll.as_raw_fd(), &mut events, timeout)?;
            if let Some(batch) = self.batch
                && n > 0
                && n < BATCH_WANT
            {
                // Edge-triggered: what became ready during the sleep is reported by the
                // next wait, which does not block.
                std::thread::sleep(batch);
                self.core.counters.syscalls += 2;
                n += sys::epoll_wait(self.epoll.as_raw_fd(), &mut events[n..], 0)?;
            }
            self.core.turn(Instant::now());
            for ev in &events[..n] {
                match Token::decode(ev.u64) {
                    Some(Token::Wake) => self.begin_stop(),
                    Some(Token::Listener(l)) => self.accept_all(l as usize)?,
                    Some(Token::Link) => self.link_ready(ev.events)?,
                    Some(Token::Conn { slot, generation }) => {
                        let slot = slot as usize;
                        match self.conns.get_mut(slot) {
                            Some(e) if e.generation == generation => e.conn.on_ready(ev.events),
                            // Closed earlier in this batch (its slot may hold a new one).
                            _ => continue,
                        }
                        self.drive(slot);
                    }
                    None => {}
                }
            }
            self.expire();
            if self.accept_pending && !self.core.stopping() && self.conns.len() < self.cap {
                self.accept_pending = false;
                for l in 0..self.listeners.len() {
                    self.accept_all(l)?;
                }
            }
            if self.core.overdue(Instant::now()) {
                self.for_each_conn(Conn::abort);
            }
            self.write_journal();
            self.flush_link()?;
            let done = self.core.stopping() && self.conns.is_empty();
            if let Some(log) = &mut self.log {
                log.maybe_flush(Instant::now(), done, &mut self.core.counters);
            }
            self.core.publish();
            if done {
                return Ok(self.core.counters);
            }
        }
    }

    /// Redis's beforeSleep: what this turn's commands journaled goes to the file, with
    /// `always` fdatasynced, and then the replies that waited for it are written.
    fn write_journal(&mut self) {
        let Some(aof) = &self.aof else {
            return;
        };
        let sync = aof.policy() == crate::cli::Fsync::Always;
        let durable = aof.write_out(journal(&self.core.proto), sync, &mut self.core.counters);
        let mut held = std::mem::take(&mut self.held);
        for (slot, generation) in held.drain(..) {
            let Some(e) = self
                .conns
                .get_mut(slot)
                .filter(|e| e.generation == generation)
            else {
                continue;
            };
            self.core.counters.aof_held += 1;
            if durable {
                let fx = e.conn.durable();
                apply(slot, fx, &mut self.core.counters, &mut self.core.wheel);
            } else {
                // Never acknowledge a write the file may not hold: the client sees the
                // connection close without its reply.
                e.conn.abort();
            }
            // Driving it may read and hold the next commands: they wait for the next turn's
            // sync (which then does not wait for events).
            self.drive(slot);
        }
        held.append(&mut self.held);
        self.held = held;
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
            self.core.counters.syscalls += 1;
            match sys::accept_nonblocking(lfd) {
                Ok(fd) if !self.core.enter() => {
                    // Over the cap: dropping `fd` closes it before a byte is read.
                    drop(fd);
                    self.core.counters.syscalls += 1;
                    self.core.counters.over_cap += 1;
                }
                Ok(fd) => {
                    self.next_gen = self.next_gen.wrapping_add(1) & GEN_MASK;
                    let entry = self.conns.vacant_entry();
                    let slot = entry.key() as u32;
                    let token = Token::Conn {
                        slot,
                        generation: self.next_gen,
                    };
                    self.core.counters.syscalls += 1;
                    if let Err(e) = sys::epoll_add(
                        self.epoll.as_raw_fd(),
                        fd.as_raw_fd(),
                        CONN_EVENTS,
                        token.encode(),
                    ) {
                        // Dropping `fd` closes it: the peer sees the close.
                        self.core.counters.refused += 1;
                        self.core.leave();
                        if e.raw_os_error() == Some(libc::ENOMEM)
                            || e.raw_os_error() == Some(libc::ENOSPC)
                        {
                            continue;
                        }
                        return Err(e);
                    }
                    self.core.wheel.start(slot);
                    let log = self.log.is_some().then(|| {
                        self.core.counters.syscalls += 1;
                        let peer = sys::peer_addr(fd.as_raw_fd()).ok();
                        Box::new(ConnLog::new(peer, Instant::now()))
                    });
                    let conn = match &mut self.link {
                        Some(wire) => {
                            // The owner logs its commands, so it is told the peer.
                            self.core.counters.syscalls += 1;
                            let peer = sys::peer_addr(fd.as_raw_fd()).ok();
                            frame::open(&mut wire.out, token.encode(), peer);
                            Conn::proxied()
                        }
                        None => {
                            let mut c = Conn::accepted(self.core.proto.as_ref());
                            if self.log.is_some() {
                                c.log_requests();
                            }
                            c
                        }
                    };
                    entry.insert(Entry {
                        fd,
                        generation: self.next_gen,
                        conn,
                        log,
                    });
                    self.core.counters.accepted += 1;
                }
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // That connection was reset before we took it.
                    Some(libc::ECONNABORTED) | Some(libc::EPROTO) => {
                        self.core.counters.refused += 1
                    }
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

    /// Performs what connection `slot` asks for, feeding each result back, until it waits
    /// for an edge or a deadline, or closes.
    fn drive(&mut self, slot: usize) {
        let Shard {
            core,
            conns,
            buf,
            answers,
            log: shard_log,
            held,
            link,
            paused,
            ..
        } = self;
        let ShardCore {
            counters,
            wheel,
            proto,
            ..
        } = core;
        let Entry {
            fd,
            conn,
            log,
            generation,
        } = &mut conns[slot];
        let fd = fd.as_raw_fd();
        // Bytes of `buf` the last read of this turn filled: an echo is owed from there.
        let mut input = 0;
        loop {
            let bufs = Bufs {
                input: &buf[..input],
                answers,
            };
            let fx = match conn.next(bufs) {
                Op::Wait => return,
                Op::Close => break,
                Op::Read if link.as_ref().is_some_and(Wire::congested) => {
                    // Read again once the owner has taken the link's output.
                    paused.push((slot, *generation));
                    return;
                }
                Op::Read => {
                    counters.syscalls += 1;
                    match sys::read(fd, buf) {
                        Ok(0) => {
                            conn.on_eof();
                            continue;
                        }
                        Ok(n) => {
                            counters.recvs += 1;
                            counters.bytes_in += n as u64;
                            if let Some(l) = log {
                                l.bytes_in += n as u64;
                            }
                            input = n;
                            let fx =
                                conn.on_recv(&buf[..n], n < buf.len(), proto.as_ref(), answers);
                            if let (true, Some(wire)) = (fx.forward, link.as_mut()) {
                                let id = Token::Conn {
                                    slot: slot as u32,
                                    generation: *generation,
                                };
                                frame::data(&mut wire.out, id.encode(), &buf[..n]);
                            }
                            if fx.lsn.is_some() {
                                // `always`: the replies wait for the turn's fdatasync.
                                held.push((slot, *generation));
                            }
                            if let Some(sl) = shard_log.as_mut()
                                && let Some(done) = conn.logged()
                            {
                                let peer = log.as_ref().and_then(|l| l.peer);
                                sl.pending.answered(peer, done, counters);
                                sl.added(counters);
                            }
                            fx
                        }
                        Err(e) if is_again(&e) => {
                            conn.on_read_blocked();
                            continue;
                        }
                        Err(e) if is_intr(&e) => continue,
                        Err(_) => conn.on_read_error(),
                    }
                }
                Op::Write(bytes) => {
                    counters.syscalls += 1;
                    counters.sends += 1;
                    match sys::write(fd, bytes) {
                        Ok(w) => {
                            counters.bytes_out += w as u64;
                            if let Some(l) = log {
                                l.bytes_out += w as u64;
                            }
                            conn.on_sent(w, bufs)
                        }
                        Err(e) if is_again(&e) => conn.on_write_blocked(bufs),
                        Err(e) if is_intr(&e) => continue,
                        Err(_) => conn.on_write_error(),
                    }
                }
                Op::Unlink => {
                    if let Some(wire) = link.as_mut() {
                        let id = Token::Conn {
                            slot: slot as u32,
                            generation: *generation,
                        };
                        frame::close(&mut wire.out, id.encode());
                    }
                    conn.on_unlinked();
                    continue;
                }
                Op::ShutWrite => {
                    counters.syscalls += 1;
                    // A peer already gone makes this fail; the reads that follow see it.
                    let _ = sys::shutdown_write(fd);
                    conn.on_shut()
                }
            };
            apply(slot, fx, counters, wheel);
        }
        self.close(slot);
    }

    /// Deadlines that passed: idle connections, and those whose peer took none of what it
    /// is owed, are closed; an HTTP head that took too long, or a body that stalled, is
    /// answered 408 and closed (lingering); a lingering close that ran out is cut.
    fn expire(&mut self) {
        let expired = self.core.take_expired();
        for &(slot, why) in &expired {
            let slot = slot as usize;
            debug_assert!(
                self.conns.contains(slot),
                "a closed connection's timer is stopped"
            );
            let Some(Entry {
                conn,
                log: entry_log,
                ..
            }) = self.conns.get_mut(slot)
            else {
                continue;
            };
            match why {
                Expired::Idle | Expired::Send | Expired::Linger => conn.abort(),
                Expired::Header | Expired::Body => {
                    let core = &mut self.core;
                    let fx = conn.time_out(core.proto.as_ref(), &mut self.answers);
                    if let Some(sl) = self.log.as_mut()
                        && let Some(done) = conn.logged()
                    {
                        let peer = entry_log.as_ref().and_then(|l| l.peer);
                        sl.pending.answered(peer, done, &mut core.counters);
                    }
                    apply(slot, fx, &mut core.counters, &mut core.wheel);
                }
            }
            self.drive(slot);
        }
        self.core.expired_done(expired);
    }

    /// Tells every connection `event`, then drives it.
    fn for_each_conn(&mut self, event: fn(&mut Conn)) {
        let slots: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in slots {
            event(&mut self.conns[slot].conn);
            self.drive(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        // Dropping the fd closes it, which also takes it out of the epoll set.
        let gone = self.conns.remove(slot);
        if let (true, Some(wire)) = (gone.conn.owner_open(), &mut self.link) {
            let id = Token::Conn {
                slot: slot as u32,
                generation: gone.generation,
            };
            frame::close(&mut wire.out, id.encode());
        }
        if gone.conn.waits_for_peer() {
            self.core.counters.output_owed -= 1;
        }
        if let (Some(log), Some(c)) = (&mut self.log, &gone.log)
            && self.core.proto.is_none()
        {
            log.pending.echo(c, Instant::now(), &mut self.core.counters);
            log.added(&mut self.core.counters);
        }
        drop(gone);
        self.core.wheel.stop(slot as u32);
        self.core.leave();
        self.core.counters.syscalls += 1;
        self.core.counters.closed += 1;
    }

    /// An event on the link to the keyspace owner: EPOLLOUT lets the end of the turn write
    /// again; anything else reads it to EAGAIN, handing each frame to its connection. The
    /// owner gone (EOF, an error, bytes that are no frame) ends the worker: its
    /// connections' keyspace is lost.
    fn link_ready(&mut self, events: u32) -> io::Result<()> {
        let Some(wire) = &mut self.link else {
            return Ok(());
        };
        if events & libc::EPOLLOUT as u32 != 0 {
            wire.writable();
        }
        if events & !(libc::EPOLLOUT as u32) == 0 {
            return Ok(());
        }
        loop {
            let Some(wire) = &mut self.link else {
                return Ok(());
            };
            match wire.read_once(&mut self.core.counters)? {
                None => return Ok(()),
                Some(0) => return Err(owner_gone("closed the link")),
                Some(_) => {}
            }
            let mut inbox = std::mem::take(&mut wire.inbox);
            let taken = loop {
                match inbox.next_frame() {
                    Ok(Some(f)) => self.on_frame(f),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(owner_gone(&e.to_string())),
                }
            };
            if let Some(wire) = &mut self.link {
                wire.inbox = inbox;
            }
            taken?;
        }
    }

    /// A frame from the owner: replies for a connection, that a read was run, or its close.
    /// One for a connection
    /// already closed here (its slot may hold a new one) is dropped.
    fn on_frame(&mut self, f: Frame<'_>) {
        let id = match f {
            Frame::Data { id, .. } | Frame::Close { id } | Frame::Ran { id } => id,
            Frame::Open { .. } => return,
        };
        let Some(Token::Conn { slot, generation }) = Token::decode(id) else {
            return;
        };
        let slot = slot as usize;
        let Some(e) = self
            .conns
            .get_mut(slot)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        match f {
            Frame::Data { bytes, .. } => {
                let fx = e.conn.on_reply(bytes);
                apply(slot, fx, &mut self.core.counters, &mut self.core.wheel);
            }
            Frame::Ran { .. } => e.conn.on_ran(),
            Frame::Close { .. } => e.conn.on_owner_close(),
            Frame::Open { .. } => {}
        }
        self.drive(slot);
    }

    /// The end of a turn: the frames it gathered go to the owner in one write; once the
    /// link's output is under its bound, the connections it paused read again.
    fn flush_link(&mut self) -> io::Result<()> {
        let Some(wire) = &mut self.link else {
            return Ok(());
        };
        wire.flush(&mut self.core.counters)
            .map_err(|e| owner_gone(&e.to_string()))?;
        if wire.congested() || self.paused.is_empty() {
            return Ok(());
        }
        for (slot, generation) in std::mem::take(&mut self.paused) {
            if self
                .conns
                .get(slot)
                .is_some_and(|e| e.generation == generation)
            {
                self.drive(slot);
            }
        }
        match &mut self.link {
            Some(wire) => wire
                .flush(&mut self.core.counters)
                .map_err(|e| owner_gone(&e.to_string())),
            None => Ok(()),
        }
    }

    fn begin_stop(&mut self) {
        if !self.core.begin_stop(Instant::now()) {
            return;
        }
        // Closing the listeners refuses new connections (and resets those in the backlog).
        self.core.counters.syscalls += self.listeners.len() as u64;
        self.listeners.clear();
        self.for_each_conn(Conn::drain);
    }
}

/// The error that ends a Redis worker whose keyspace owner is gone.
fn owner_gone(why: &str) -> io::Error {
    io::Error::other(format!(
        "the keyspace owner is gone ({why}): its keyspace is lost, and the master ends the \
         server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Wake,
            Token::Link,
            Token::Listener(0),
            Token::Listener(49),
            Token::Listener(u32::MAX),
            Token::Conn {
                slot: 0,
                generation: 0,
            },
            Token::Conn {
                slot: u32::MAX,
                generation: GEN_MASK,
            },
            Token::Conn {
                slot: 19_999,
                generation: 12_345,
            },
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t), "{t:?}");
        }
    }

    #[test]
    fn generation_wraps_at_31_bits_clear_of_the_reserved_tokens() {
        let t = Token::Conn {
            slot: 7,
            generation: GEN_MASK + 2,
        };
        assert_eq!(t.encode() & RESERVED, 0);
        assert_eq!(
            Token::decode(t.encode()),
            Some(Token::Conn {
                slot: 7,
                generation: 1
            })
        );
    }

    #[test]
    fn unknown_tokens_are_none() {
        assert_eq!(Token::decode(RESERVED | 1 << 32), None);
        assert_eq!(Token::decode(u64::MAX - 2), None);
    }
}
