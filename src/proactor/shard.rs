//! One Proactor shard: a thread pinned to a core that owns a ring, its listeners, its
//! connections and its provided buffers, and only reacts to completions.
//!
//! The fixed-file table never fills: a multishot accept into a full table fails with -ENFILE
//! and that connection is lost, and one multishot run may drain a whole listen backlog
//! (io_accept retries while the socket has more) before the shard sees a single completion.
//! So multishot accepts run only while the table has ample room (below `MULTI_FILL_PCT`);
//! above that, accepts are single-shot, at most one per listener and never more in flight
//! than free slots; when none fits, accepting pauses until connections close. A recv that
//! ended with -ENOBUFS is re-armed only after buffers have come back, one waiting connection
//! per returned buffer, so an empty ring never becomes a storm of re-arms.
//!
//! Beyond the `--max-conns` cap (shared by the process's shards) a connection is closed as
//! soon as its accept completes. Idle and header deadlines live in one timer wheel per shard
//! (`timer::Wheel`), keyed by slot; the shard wakes at least once per tick while any is set.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use slab::Slab;

use super::aof::{Op as AofOp, ShardAof};
use super::conn::{Conn, Effect, Received};
use super::log::{ShardLog, Write};
use crate::server::ShardCtx;
use crate::server::access::Pending;
use crate::server::core::{ProtoEnv, ShardCore};
use crate::stats::Counters;
use crate::sys;
use crate::timer::Expired;
use crate::uring::{self, GEN_MASK, RingConfig};

uring::op_kinds! {
    /// What an operation of a server shard's ring was for, the top byte of its `user_data`.
    enum Kind {
        /// Accept on a listener; `slot` is the listener index.
        Accept,
        /// Multishot recv on a connection.
        Recv,
        /// Send from a provided buffer.
        SendBuf,
        /// Send from bytes the ring holds for the operation (`send_vec`).
        SendVec,
        /// Cancel requests; its own completion carries nothing to act on.
        Cancel,
        /// Close a connection's direct descriptor.
        Close,
        /// Close a connection refused at the `--max-conns` cap as soon as it was accepted.
        Refuse,
        /// Shut a connection's write side (lingering close); its completion carries nothing.
        Shutdown,
        /// Read of the shard's wake-up eventfd.
        Wake,
        /// A connection's direct descriptor installed as a plain fd, for its peer's address
        /// (the access log).
        Peer,
        /// A write of the access log (one file operation in flight).
        LogWrite,
        /// An fdatasync of the access log (`--access-log-fsync`).
        LogSync,
        /// A write of the append-only file's records (one batch in flight per server).
        AofWrite,
        /// An fdatasync of the append-only file (`--appendfsync always` or `everysec`).
        AofSync,
        /// Read of the eventfd another shard signals when the journal became durable.
        Durable,
    }
}

type Ring = uring::Ring<Kind>;
type Completion = uring::Completion<Kind>;
type UserData = uring::UserData<Kind>;

/// Where a thread's shards copy their completions out of the CQ, one shard at a time.
pub struct Cqes(Vec<Completion>);

impl Default for Cqes {
    fn default() -> Cqes {
        Cqes(Vec::with_capacity(4096))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    Multi,
    /// A single-shot accept: takes at most one slot.
    Single,
    /// Cancel submitted; the final completion has not come yet.
    Cancelling {
        single: bool,
    },
    Off,
}

/// Multishot accepts run while the table is below this fill; single-shot ones above.
const MULTI_FILL_PCT: u32 = 75;

fn multi_limit(slots: u32) -> u32 {
    (u64::from(slots) * u64::from(MULTI_FILL_PCT) / 100) as u32
}

/// The listen backlog for each of a shard's `ports` listeners: together they hold no more
/// than the table's room above the multishot limit, which bounds what one multishot run can
/// accept after the last completion the shard saw. (20,000 slots over 50 ports: 100 each;
/// with a listener per shard per port, a port's backlogs add up over the shards.)
pub fn listen_backlog(slots: u32, ports: usize) -> u32 {
    ((slots - multi_limit(slots)) / ports.max(1) as u32).max(16)
}

pub struct Shard {
    ring: Ring,
    core: ShardCore,
    conns: Slab<Conn>,
    listeners: Vec<OwnedFd>,
    accept: Vec<Accept>,
    wake: OwnedFd,
    /// The eventfd the ring signals when it has work, for a shard that shares its thread.
    notify: Option<OwnedFd>,
    /// Waits (epoll_wait) of the thread this shard shares, counted in its syscalls.
    waits: u64,
    /// Direct descriptors in the table: accepted and not yet closed.
    in_table: u32,
    slots: u32,
    /// At or above this many connections in the table, no multishot accept is armed.
    multi_limit: u32,
    /// Set while no accept could be armed for lack of slots.
    paused: bool,
    /// Connections whose recv waits for buffers: (slot, generation), oldest first.
    waiting: VecDeque<(u32, u32)>,
    next_gen: u32,
    /// The shutdown timeout passed and every connection was aborted.
    aborted: bool,
    /// What the connection being driven asked for; applied by `apply`.
    effects: Vec<Effect>,
    /// `--access-log`.
    log: Option<ShardLog<Completion>>,
    /// Redis's `--appendonly`.
    aof: Option<ShardAof>,
    /// Connections whose held replies may go, gathered by `ShardAof::release`.
    released: Vec<(u32, u32, u64)>,
}

impl Shard {
    /// Builds the ring on the calling thread (it becomes the ring's single issuer). A shard
    /// that shares its thread with others (`group`) gets an eventfd the kernel signals when
    /// its ring has work (`notify_fd`).
    pub fn new(ctx: ShardCtx, mut ring_cfg: RingConfig, shared: bool) -> io::Result<Self> {
        let notify = shared.then(sys::eventfd).transpose()?;
        ring_cfg.notify = notify.as_ref().map(|fd| fd.as_raw_fd());
        let ring = Ring::new(&ring_cfg)?;
        let slots = ring_cfg.fixed_files;
        let core = ShardCore::new(&ctx);
        let n = ctx.listeners.len();
        let log = ctx
            .log
            .map(|(file, cap, fsync)| ShardLog::new(Pending::new(file, cap, fsync)));
        let aof = ctx.redis.as_ref().and_then(|r| {
            let aof = r.aof.clone()?;
            Some(ShardAof::new(ctx.index, aof, r.keyspace.clone()))
        });
        Ok(Shard {
            ring,
            core,
            conns: Slab::with_capacity(1024),
            listeners: ctx.listeners,
            accept: vec![Accept::Off; n],
            wake: ctx.wake,
            notify,
            waits: 0,
            in_table: 0,
            slots,
            // Pause with room to spare for the accepts that complete before the cancel lands.
            multi_limit: multi_limit(slots),
            paused: false,
            waiting: VecDeque::new(),
            next_gen: 0,
            aborted: false,
            effects: Vec::new(),
            log,
            aof,
            released: Vec::new(),
        })
    }

    /// Runs until a wake-up asks it to stop and every connection has closed: a ring on a
    /// thread of its own, which waits in the ring (batched by `--batch-usec`).
    pub fn run(mut self) -> io::Result<Counters> {
        self.start()?;
        let mut cqes = Cqes::default();
        loop {
            let timeout = self.wait_timeout(Instant::now());
            if self.aof.as_ref().is_some_and(ShardAof::urgent) {
                self.ring.submit_and_wait_unbatched(timeout)?;
            } else {
                // With fewer than 64 connections, a batch waits for as many completions as
                // it holds connections: measured at 10 connections closed loop, 31,000 ->
                // 116,000-130,000 req/s (twice as many: 58,000-60,000), and no change at 500
                // connections, which ask for 64 (bench/results/README.md).
                self.ring.submit_and_wait(timeout, self.in_table as usize)?;
            }
            self.turn(&mut cqes)?;
            if self.finished() {
                return Ok(self.finish());
            }
        }
    }

    /// Arms the listeners' accepts and the read of the stop wake-up (submitted by the first
    /// enter).
    pub fn start(&mut self) -> io::Result<()> {
        for l in 0..self.listeners.len() {
            self.arm_accept(l)?;
        }
        if let Some(fd) = self.aof.as_ref().and_then(ShardAof::notify_fd) {
            self.ring
                .read_eventfd(fd, UserData::new(Kind::Durable, 0, 0))?;
        }
        let wake_ud = UserData::new(Kind::Wake, 0, 0);
        self.ring.read_eventfd(self.wake.as_raw_fd(), wake_ud)
    }

    /// Acts on every completion in the CQ, then on the timers, accepts and buffer waiters.
    fn turn(&mut self, cqes: &mut Cqes) -> io::Result<()> {
        self.ring.drain(&mut cqes.0);
        self.core.turn(Instant::now());
        for c in cqes.0.drain(..) {
            self.complete(c)?;
        }
        self.after_turn()
    }

    /// One go of a shard that shares its thread: if its ring has work, one enter that runs
    /// the deferred completions, and a turn on what came back (also with none, for the
    /// timers); then the submission of what the turn queued, so that no answer waits for
    /// the thread's next round. At most two enters per go keeps the thread's rings fair: a
    /// busy ring always has more, and looping on it would starve the others. True if the
    /// ring has work again (completions that came during the go, which the muted eventfd did
    /// not report): go again before waiting.
    pub fn step(&mut self, cqes: &mut Cqes) -> io::Result<bool> {
        self.ring.mute();
        if self.ring.has_work() {
            self.ring.submit()?;
        }
        self.turn(cqes)?;
        if self.ring.has_work() {
            self.ring.submit()?;
        }
        Ok(self.ring.unmute())
    }

    /// The eventfd a shared shard's ring signals (see `new`).
    pub fn notify_fd(&self) -> Option<RawFd> {
        self.notify.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// How long the shard may go without a turn (its timers, the stop deadline, or its
    /// access log's next write).
    pub fn wait_timeout(&self, now: Instant) -> Option<Duration> {
        let log = self.log.as_ref().and_then(|l| l.pending.due_in(now));
        match (self.core.wait_timeout(now), log) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts `n` waits of the thread this shard shares, in its syscalls.
    pub fn count_waits(&mut self, n: u64) {
        self.waits += n;
    }

    /// Stopping, with every connection closed and nothing in flight.
    pub fn finished(&self) -> bool {
        self.core.stopping()
            && self.conns.is_empty()
            && self.ring.in_flight() == 0
            && self.log.as_ref().is_none_or(ShardLog::idle)
            && self.aof.as_ref().is_none_or(ShardAof::idle)
    }

    /// The final counters, published.
    pub fn finish(&mut self) -> Counters {
        self.publish();
        self.core.counters
    }

    fn publish(&mut self) {
        self.core.counters.syscalls = self.ring.enters + self.waits;
        self.core.counters.cq_overflow = self.ring.cq_overflow();
        self.core.counters.waiting_buffers = self.waiting.len() as u64;
        self.core.publish();
    }
    /// Arms listener `l`'s accept: multishot while the table has ample room (with a little
    /// hysteresis), single-shot while a slot is free for it, else nothing (paused).
    fn arm_accept(&mut self, l: usize) -> io::Result<bool> {
        let ud = UserData::new(Kind::Accept, l as u32, 0);
        let fd = self.listeners[l].as_raw_fd();
        let singles = self
            .accept
            .iter()
            .filter(|a| matches!(a, Accept::Single | Accept::Cancelling { single: true }))
            .count() as u32;
        let hysteresis = self.slots / 32;
        if self.in_table + hysteresis < self.multi_limit {
            self.ring.accept_multishot(fd, ud)?;
            self.accept[l] = Accept::Multi;
        } else if self.in_table + singles < self.slots {
            self.ring.accept_one(fd, ud)?;
            self.accept[l] = Accept::Single;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Cancels listener accepts: all of them, or only the multishot ones.
    fn cancel_accepts(&mut self, multishot_only: bool) -> io::Result<()> {
        for l in 0..self.accept.len() {
            let single = match self.accept[l] {
                Accept::Multi => false,
                Accept::Single if !multishot_only => true,
                _ => continue,
            };
            let target = UserData::new(Kind::Accept, l as u32, 0);
            self.ring
                .cancel(target, UserData::new(Kind::Cancel, 0, 0))?;
            self.accept[l] = Accept::Cancelling { single };
        }
        Ok(())
    }

    /// Arms every listener whose accept has ended, as far as the table allows.
    fn rearm_accepts(&mut self) -> io::Result<()> {
        if self.core.stopping() {
            return Ok(());
        }
        if self.in_table >= self.multi_limit {
            self.cancel_accepts(true)?;
        }
        let mut blocked = false;
        for l in 0..self.accept.len() {
            if self.accept[l] == Accept::Off {
                if self.arm_accept(l)? {
                    self.core.counters.rearms += 1;
                } else {
                    blocked = true;
                }
            }
        }
        if blocked && !self.paused {
            self.core.counters.accept_pauses += 1;
        }
        self.paused = blocked;
        Ok(())
    }

    /// Feeds the connection in `slot` an event with `f`, if it is still generation
    /// `generation` (a completion can outlive its connection), and applies what it asks.
    fn drive(
        &mut self,
        slot: u32,
        generation: u32,
        f: impl FnOnce(&mut Conn, Option<&ProtoEnv>, &mut Vec<Effect>),
    ) -> io::Result<()> {
        let Some(conn) = self
            .conns
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
        else {
            return Ok(());
        };
        let fixed = conn.fixed;
        f(conn, self.core.proto.as_ref(), &mut self.effects);
        if let Some(log) = &mut self.log
            && let Some(done) = conn.logged()
        {
            log.answered(slot, generation, done, &mut self.core.counters);
        }
        self.apply(slot, generation, fixed)
    }

    /// Carries out, in order, what connection (`slot`, `generation`) in direct descriptor
    /// `fixed` asked for: the one place a connection's operations are submitted.
    fn apply(&mut self, slot: u32, generation: u32, fixed: u32) -> io::Result<()> {
        let mut effects = std::mem::take(&mut self.effects);
        let ud = |kind| UserData::new(kind, slot, generation);
        let ShardCore {
            counters, wheel, ..
        } = &mut self.core;
        for e in effects.drain(..) {
            match e {
                Effect::SendBuf { bid, off, len } => {
                    counters.sends += 1;
                    counters.output_owed += 1;
                    wheel.owed(slot, true);
                    self.ring
                        .send_buf(fixed, bid, off, len, ud(Kind::SendBuf))?;
                }
                Effect::SendVec { data, start } => {
                    counters.sends += 1;
                    counters.output_owed += 1;
                    wheel.owed(slot, true);
                    self.ring.send_vec(fixed, data, start, ud(Kind::SendVec))?;
                }
                Effect::Recycle(bid) => self.ring.bufs_mut().recycle(bid),
                Effect::ArmRecv => self.ring.recv_multishot(fixed, ud(Kind::Recv))?,
                Effect::WaitBuffers => self.waiting.push_back((slot, generation)),
                Effect::CancelRecv => self.ring.cancel(ud(Kind::Recv), ud(Kind::Cancel))?,
                Effect::CancelSend { vec } => {
                    let target = if vec { Kind::SendVec } else { Kind::SendBuf };
                    self.ring.cancel(ud(target), ud(Kind::Cancel))?;
                }
                Effect::ShutdownWrite => self.ring.shutdown_write(fixed, ud(Kind::Shutdown))?,
                Effect::Close => self.ring.close_fixed(fixed, ud(Kind::Close))?,
                Effect::ShortSend => counters.short_sends += 1,
                Effect::Answered(n) => counters.requests += u64::from(n),
                Effect::Hold(lsn) => {
                    counters.aof_held += 1;
                    if let Some(aof) = &mut self.aof {
                        aof.held.push((slot, generation, lsn));
                    }
                }
                Effect::Failed => counters.conn_errors += 1,
                Effect::Reading(part) => wheel.reading(slot, part),
                Effect::Linger => wheel.linger(slot),
            }
        }
        self.effects = effects;
        Ok(())
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        let UserData {
            kind,
            slot,
            generation,
        } = c.ud;
        match kind {
            Kind::Accept => self.on_accept(slot as usize, &c)?,
            Kind::Recv => match &mut self.log {
                Some(log) if log.holds() => log.park(c, Instant::now()),
                _ => self.on_recv(&c)?,
            },
            Kind::SendBuf | Kind::SendVec => {
                debug_assert_eq!(kind == Kind::SendVec, c.vec.is_some());
                // Every send submitted ends in one completion, a cancelled one too.
                self.core.counters.output_owed -= 1;
                // Only an echo connection's line counts its bytes: HTTP's and Redis's would
                // touch the connection's log entry once more per request, for nothing.
                if c.res > 0
                    && self.core.proto.is_none()
                    && let Some(log) = &mut self.log
                {
                    log.sent(slot, generation, c.res as u32);
                }
                if c.res > 0 {
                    self.core.counters.bytes_out += c.res as u64;
                    self.core.wheel.sent(slot);
                }
                // At most one send is in flight: none is now, until the connection asks
                // for the next, which sets the send deadline again.
                self.core.wheel.owed(slot, false);
                self.drive(slot, generation, |conn, _, out| {
                    conn.on_sent(c.res, c.vec, out)
                })?;
            }
            Kind::Close => {
                if self
                    .conns
                    .get(slot as usize)
                    .is_some_and(|conn| conn.generation == generation)
                {
                    self.conns.remove(slot as usize);
                    if let Some(log) = &mut self.log {
                        let echo = self.core.proto.is_none();
                        let now = Instant::now();
                        log.closed(slot, generation, echo, now, &mut self.core.counters);
                    }
                    self.core.wheel.stop(slot);
                    self.core.leave();
                    self.in_table -= 1;
                    self.core.counters.closed += 1;
                }
            }
            Kind::Refuse => self.in_table -= 1,
            Kind::Wake => self.begin_stop()?,
            Kind::Peer => {
                if let (Some(log), Some(fd)) = (&mut self.log, c.installed) {
                    log.installed(slot, generation, fd);
                }
            }
            Kind::LogSync => {
                let log = self.log.as_mut().expect("only a log syncs");
                log.sync_done(c.res, Instant::now(), &mut self.core.counters);
            }
            Kind::LogWrite => {
                let (data, start) = c.vec.expect("a log write hands its bytes back");
                let log = self.log.as_mut().expect("only a log writes");
                let next = log.wrote(c.res, data, start, &mut self.core.counters);
                self.submit_log(next)?;
            }
            Kind::AofWrite => {
                let (data, start) = c.vec.expect("a journal write hands its bytes back");
                let aof = self.aof.as_mut().expect("only the append-only file writes");
                let next = aof.wrote(c.res, data, start, &mut self.core.counters);
                self.submit_aof(next)?;
            }
            Kind::AofSync => {
                let aof = self.aof.as_mut().expect("only the append-only file syncs");
                let next = aof.synced(c.res, &mut self.core.counters);
                self.submit_aof(next)?;
            }
            Kind::Durable => {
                // The held replies are looked at after the turn; read the next signal. A
                // failed read is not retried (it would fail again, every turn): the held
                // replies are then looked at on the shard's other wake-ups.
                if c.res > 0
                    && !self.core.stopping()
                    && let Some(fd) = self.aof.as_ref().and_then(ShardAof::notify_fd)
                {
                    self.ring
                        .read_eventfd(fd, UserData::new(Kind::Durable, 0, 0))?;
                }
            }
            Kind::Cancel | Kind::Shutdown => {}
        }
        Ok(())
    }

    /// The append-only file's part of a turn: the replies its durability lets go, then the
    /// next batch (or sync) to the ring.
    fn aof_turn(&mut self) -> io::Result<()> {
        let Some(aof) = &mut self.aof else {
            return Ok(());
        };
        let mut released = std::mem::take(&mut self.released);
        aof.release(&mut released);
        for (slot, generation, lsn) in released.drain(..) {
            self.drive(slot, generation, |conn, _, out| conn.durable(lsn, out))?;
        }
        self.released = released;
        let next = self.aof.as_mut().and_then(ShardAof::next_op);
        self.submit_aof(next)
    }

    fn submit_aof(&mut self, op: Option<AofOp>) -> io::Result<()> {
        match op {
            None => Ok(()),
            Some(AofOp::Write {
                file,
                data,
                start,
                sync: false,
            }) => self
                .ring
                .write_file(file, data, start, UserData::new(Kind::AofWrite, 0, 0)),
            Some(AofOp::Write {
                file,
                data,
                start,
                sync: true,
            }) => self.ring.write_then_sync(
                file,
                data,
                start,
                UserData::new(Kind::AofWrite, 0, 0),
                UserData::new(Kind::AofSync, 0, 0),
            ),
            Some(AofOp::Sync { file }) => self
                .ring
                .sync_file(file, UserData::new(Kind::AofSync, 0, 0)),
        }
    }

    fn on_accept(&mut self, l: usize, c: &Completion) -> io::Result<()> {
        if !c.more() {
            // A single-shot accept always ends here; a multishot one when it was cancelled
            // or failed. Either way `rearm_accepts` decides what comes next.
            self.accept[l] = Accept::Off;
        }
        if c.res >= 0 && !self.core.enter() {
            // Over the cap: closed at once, before a byte is read.
            self.in_table += 1;
            self.core.counters.over_cap += 1;
            self.ring
                .close_fixed(c.res as u32, UserData::new(Kind::Refuse, 0, 0))?;
        } else if c.res >= 0 {
            let fixed = c.res as u32;
            self.core.counters.accepted += 1;
            self.in_table += 1;
            self.next_gen = self.next_gen.wrapping_add(1);
            let generation = self.next_gen & GEN_MASK;
            let entry = self.conns.vacant_entry();
            let slot = entry.key() as u32;
            let out = &mut self.effects;
            let conn = entry.insert(Conn::accepted(
                generation,
                fixed,
                self.core.proto.as_ref(),
                out,
            ));
            if self.log.is_some() {
                conn.log_requests();
            }
            if self.aborted {
                conn.abort(out);
            } else if self.core.stopping() {
                conn.drain(out);
            }
            if let Some(log) = &mut self.log {
                // Before the recv: both complete as they are submitted, the install first,
                // so the peer is known when the first request is logged.
                log.opened(slot, generation, Instant::now());
                self.ring
                    .install_fixed(fixed, UserData::new(Kind::Peer, slot, generation))?;
            }
            self.apply(slot, generation, fixed)?;
            self.core.wheel.start(slot);
        } else {
            match -c.res {
                libc::ECANCELED => {}
                // Misuse of the listener, not a peer's doing: re-arming would spin.
                e @ (libc::EINVAL | libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP) => {
                    return Err(io::Error::new(
                        io::Error::from_raw_os_error(e).kind(),
                        format!(
                            "multishot accept failed: {}",
                            io::Error::from_raw_os_error(e)
                        ),
                    ));
                }
                // -ENFILE (table full), -ECONNABORTED, -ENOMEM...: that connection is lost.
                _ => self.core.counters.refused += 1,
            }
        }
        if self.in_table >= self.multi_limit {
            self.cancel_accepts(true)?;
        }
        Ok(())
    }

    fn on_recv(&mut self, c: &Completion) -> io::Result<()> {
        let (slot, generation, more) = (c.ud.slot, c.ud.generation, c.more());
        let buf = c.buffer();
        // The bytes a data completion carries (none for the end of the recv).
        let len = if buf.is_some() {
            c.res.max(0) as u32
        } else {
            0
        };
        let counters = &mut self.core.counters;
        match buf {
            Some(bid) => {
                self.ring.bufs_mut().taken(bid);
                if len > 0 {
                    counters.recvs += 1;
                    counters.bytes_in += u64::from(len);
                    if !more {
                        counters.rearms += 1;
                    }
                }
            }
            None if c.res == -libc::ENOBUFS => counters.enobufs += 1,
            None => {}
        }
        let Some(conn) = self
            .conns
            .get_mut(slot as usize)
            .filter(|conn| conn.generation == generation)
        else {
            // A completion that outlived its connection: only its buffer matters.
            if let Some(bid) = buf {
                self.ring.bufs_mut().recycle(bid);
            }
            return Ok(());
        };
        let fixed = conn.fixed;
        let r = Received {
            res: c.res,
            buf: buf.map(|bid| (bid, self.ring.bufs().bytes(bid, len))),
            more,
        };
        conn.on_recv(r, self.core.proto.as_ref(), &mut self.effects);
        if let Some(log) = &mut self.log
            && let Some(done) = conn.logged()
        {
            log.answered(slot, generation, done, &mut self.core.counters);
        }
        if len > 0 {
            self.core.wheel.received(slot);
            if self.core.proto.is_none()
                && let Some(log) = &mut self.log
            {
                log.received(slot, generation, len);
            }
        }
        self.apply(slot, generation, fixed)
    }

    /// Every connection's (slot, generation), to drive them all.
    fn all_conns(&self) -> Vec<(u32, u32)> {
        self.conns
            .iter()
            .map(|(k, c)| (k as u32, c.generation))
            .collect()
    }

    fn begin_stop(&mut self) -> io::Result<()> {
        if !self.core.begin_stop(Instant::now()) {
            return Ok(());
        }
        self.cancel_accepts(false)?;
        if self.aof.as_ref().and_then(ShardAof::notify_fd).is_some() {
            // While stopping a turn comes at least every 100 ms: held replies are looked at
            // then, and the read must end for the shard to finish.
            let target = UserData::new(Kind::Durable, 0, 0);
            self.ring
                .cancel(target, UserData::new(Kind::Cancel, 0, 0))?;
        }
        // Closing our fds makes each listener go away once its accept has ended, so new
        // connections are refused rather than left in a backlog nobody accepts from.
        self.listeners.clear();
        for (slot, generation) in self.all_conns() {
            self.drive(slot, generation, |conn, _, out| conn.drain(out))?;
        }
        Ok(())
    }

    /// Acts on the deadlines that passed: idle connections, and those whose peer took none of
    /// what it is owed, are cut; an HTTP head that took too long, or a body that stalled, is
    /// answered 408 and closed (lingering); a lingering close that ran out is cut.
    fn expire(&mut self) -> io::Result<()> {
        let expired = self.core.take_expired();
        for &(slot, why) in &expired {
            let Some(generation) = self.conns.get(slot as usize).map(|c| c.generation) else {
                debug_assert!(false, "a closed connection's timer is stopped");
                continue;
            };
            match why {
                Expired::Idle | Expired::Send | Expired::Linger => {
                    self.drive(slot, generation, |conn, _, out| conn.abort(out))?;
                }
                Expired::Header | Expired::Body => {
                    self.drive(slot, generation, |conn, http, out| conn.time_out(http, out))?;
                }
            }
        }
        self.core.expired_done(expired);
        Ok(())
    }

    /// The access log's part of a turn: the recv completions held while its buffer was
    /// full go on, oldest first, while it has room; then what is pending is handed to the
    /// ring, if no write is in flight.
    fn log_turn(&mut self) -> io::Result<()> {
        if self.log.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        while let Some(c) = self
            .log
            .as_mut()
            .and_then(|l| l.unpark(now, &mut self.core.counters))
        {
            self.on_recv(&c)?;
        }
        let stopping = self.core.stopping();
        let next = self
            .log
            .as_mut()
            .map_or(Write::None, |l| l.next_write(now, stopping));
        self.submit_log(next)
    }

    fn submit_log(&mut self, w: Write) -> io::Result<()> {
        match w {
            Write::None => Ok(()),
            Write::Batch { file, data, start } => {
                let ud = UserData::new(Kind::LogWrite, 0, 0);
                self.ring.write_file(file, data, start, ud)
            }
            Write::Sync { file } => {
                let ud = UserData::new(Kind::LogSync, 0, 0);
                self.ring.sync_file(file, ud)
            }
        }
    }

    fn after_turn(&mut self) -> io::Result<()> {
        self.log_turn()?;
        self.aof_turn()?;
        self.expire()?;
        self.rearm_accepts()?;
        // One waiting connection per buffer available: each re-arm can take at least one.
        let mut budget = self.ring.bufs().available();
        while budget > 0 {
            let Some((slot, generation)) = self.waiting.pop_front() else {
                break;
            };
            let mut waited = false;
            self.drive(slot, generation, |conn, _, out| waited = conn.rearm(out))?;
            if waited {
                self.core.counters.rearms += 1;
                budget -= 1;
            }
        }
        if !self.aborted && self.core.overdue(Instant::now()) {
            self.aborted = true;
            for (slot, generation) in self.all_conns() {
                self.drive(slot, generation, |conn, _, out| conn.abort(out))?;
            }
        }
        self.publish();
        Ok(())
    }
}
