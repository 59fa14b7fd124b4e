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
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{Conn, ConnIo};
use super::ring::{Completion, Kind, Ring, RingConfig, UserData};
use crate::proto::http;
use crate::server::{Gate, ShardCtx};
use crate::stats::{Counters, SharedCounters};
use crate::timer::{Expired, Wheel};

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
    conns: Slab<Conn>,
    listeners: Vec<OwnedFd>,
    accept: Vec<Accept>,
    wake: OwnedFd,
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
    counters: Counters,
    shared: Arc<SharedCounters>,
    shutdown_timeout: Duration,
    deadline: Option<Instant>,
    aborted: bool,
    /// HTTP's limits and the Date of the current second, when HTTP is served.
    http: Option<(http::Limits, http::Date)>,
    /// Idle and header deadlines, keyed by slot.
    wheel: Wheel,
    expired: Vec<(u32, Expired)>,
    gate: Option<Arc<Gate>>,
}

/// Carries a connection's actions out on the ring.
struct Io<'a> {
    ring: &'a mut Ring,
    counters: &'a mut Counters,
    waiting: &'a mut VecDeque<(u32, u32)>,
    slot: u32,
    generation: u32,
    fixed: u32,
    err: Option<io::Error>,
    http: Option<&'a (http::Limits, http::Date)>,
}

impl Io<'_> {
    fn ud(&self, kind: Kind) -> UserData {
        UserData::new(kind, self.slot, self.generation)
    }

    fn check(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.err.get_or_insert(e);
        }
    }
}

impl ConnIo for Io<'_> {
    fn send_buf(&mut self, bid: u16, off: u32, len: u32) {
        self.counters.sends += 1;
        let ud = self.ud(Kind::SendBuf);
        let r = self.ring.send_buf(self.fixed, bid, off, len, ud);
        self.check(r);
    }

    fn send_vec(&mut self, data: Vec<u8>, start: usize) {
        self.counters.sends += 1;
        let ud = self.ud(Kind::SendVec);
        let r = self.ring.send_vec(self.fixed, data, start, ud);
        self.check(r);
    }

    fn buf_bytes(&self, bid: u16, len: u32) -> &[u8] {
        self.ring.bufs().bytes(bid, len)
    }

    fn recycle(&mut self, bid: u16) {
        self.ring.bufs_mut().recycle(bid);
    }

    fn arm_recv(&mut self) {
        let ud = self.ud(Kind::Recv);
        let r = self.ring.recv_multishot(self.fixed, ud);
        self.check(r);
    }

    fn wait_buffers(&mut self) {
        self.waiting.push_back((self.slot, self.generation));
    }

    fn cancel_recv(&mut self) {
        let (target, ud) = (self.ud(Kind::Recv), self.ud(Kind::Cancel));
        let r = self.ring.cancel(target, ud);
        self.check(r);
    }

    fn cancel_send(&mut self, vec: bool) {
        let target = self.ud(if vec { Kind::SendVec } else { Kind::SendBuf });
        let ud = self.ud(Kind::Cancel);
        let r = self.ring.cancel(target, ud);
        self.check(r);
    }

    fn close(&mut self) {
        let ud = self.ud(Kind::Close);
        let r = self.ring.close_fixed(self.fixed, ud);
        self.check(r);
    }

    fn short_send(&mut self) {
        self.counters.short_sends += 1;
    }

    fn http_env(&self) -> (&http::Limits, &http::Date) {
        let (limits, date) = self.http.expect("only HTTP connections ask");
        (limits, date)
    }

    fn answered(&mut self, n: u32) {
        self.counters.requests += u64::from(n);
    }

    fn failed(&mut self) {
        self.counters.conn_errors += 1;
    }

    fn shutdown_write(&mut self) {
        let ud = self.ud(Kind::Shutdown);
        let r = self.ring.shutdown_write(self.fixed, ud);
        self.check(r);
    }
}

impl Shard {
    /// Builds the ring on the calling thread (it becomes the ring's single issuer).
    pub fn new(cfg: ShardCtx, ring_cfg: RingConfig) -> io::Result<Self> {
        let ring = Ring::new(&ring_cfg)?;
        let slots = ring_cfg.fixed_files;
        // Pause with room to spare for the accepts that complete before the cancel lands.
        let multi_limit = multi_limit(slots);
        let n = cfg.listeners.len();
        Ok(Shard {
            ring,
            conns: Slab::with_capacity(1024),
            listeners: cfg.listeners,
            accept: vec![Accept::Off; n],
            wake: cfg.wake,
            in_table: 0,
            slots,
            multi_limit,
            paused: false,
            waiting: VecDeque::new(),
            next_gen: 0,
            counters: Counters::default(),
            shared: cfg.counters,
            shutdown_timeout: cfg.shutdown_timeout,
            deadline: None,
            aborted: false,
            http: cfg.http.map(|limits| (limits, http::Date::now())),
            wheel: Wheel::new(cfg.timeouts, Instant::now()),
            expired: Vec::new(),
            gate: cfg.gate,
        })
    }

    /// Runs until a wake-up asks it to stop and every connection has closed.
    pub fn run(mut self) -> io::Result<Counters> {
        for l in 0..self.listeners.len() {
            self.arm_accept(l)?;
        }
        let wake_ud = UserData::new(Kind::Wake, 0, 0);
        self.ring.read_eventfd(self.wake.as_raw_fd(), wake_ud)?;
        let mut cqes = Vec::with_capacity(4096);
        loop {
            let now = Instant::now();
            let stop = self.deadline.map(|d| {
                d.saturating_duration_since(now)
                    .max(Duration::from_millis(10))
            });
            let timeout = match (stop, self.wheel.next_wake(now)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.ring.submit_and_wait(timeout)?;
            self.ring.drain(&mut cqes);
            let now = Instant::now();
            self.wheel.set_clock(now);
            if let Some((_, date)) = &mut self.http {
                date.refresh();
            }
            for c in cqes.drain(..) {
                self.complete(c)?;
            }
            self.after_turn()?;
            if self.deadline.is_some() && self.conns.is_empty() && self.ring.in_flight() == 0 {
                self.publish();
                return Ok(self.counters);
            }
        }
    }

    fn publish(&mut self) {
        self.counters.syscalls = self.ring.enters;
        self.counters.cq_overflow = self.ring.cq_overflow();
        self.shared.publish(&self.counters);
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
        if self.deadline.is_some() {
            return Ok(());
        }
        if self.in_table >= self.multi_limit {
            self.cancel_accepts(true)?;
        }
        let mut blocked = false;
        for l in 0..self.accept.len() {
            if self.accept[l] == Accept::Off {
                if self.arm_accept(l)? {
                    self.counters.rearms += 1;
                } else {
                    blocked = true;
                }
            }
        }
        if blocked && !self.paused {
            self.counters.accept_pauses += 1;
        }
        self.paused = blocked;
        Ok(())
    }

    /// Runs `f` on the connection in `slot` if it is still generation `generation`.
    /// Returns None for a completion that outlived its connection.
    fn with_conn<R>(
        &mut self,
        slot: u32,
        generation: u32,
        f: impl FnOnce(&mut Conn, &mut Io<'_>) -> R,
    ) -> io::Result<Option<R>> {
        let Some(conn) = self
            .conns
            .get_mut(slot as usize)
            .filter(|c| c.generation == generation)
        else {
            return Ok(None);
        };
        let mut io = Io {
            ring: &mut self.ring,
            counters: &mut self.counters,
            waiting: &mut self.waiting,
            slot,
            generation,
            fixed: conn.fixed,
            err: None,
            http: self.http.as_ref(),
        };
        let r = f(conn, &mut io);
        match io.err {
            Some(e) => Err(e),
            None => Ok(Some(r)),
        }
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        let UserData {
            kind,
            slot,
            generation,
        } = c.ud;
        match kind {
            Kind::Accept => self.on_accept(slot as usize, &c)?,
            Kind::Recv => self.on_recv(&c)?,
            Kind::SendBuf => {
                self.count_send(slot, c.res);
                self.with_conn(slot, generation, |conn, io| conn.on_sent_buf(c.res, io))?;
            }
            Kind::SendVec => {
                self.count_send(slot, c.res);
                let (data, start) = c.vec.expect("the ring hands back a SendVec's bytes");
                self.with_conn(slot, generation, |conn, io| {
                    conn.on_sent_vec(c.res, data, start, io)
                })?;
            }
            Kind::Close => {
                if self
                    .conns
                    .get(slot as usize)
                    .is_some_and(|conn| conn.generation == generation)
                {
                    self.conns.remove(slot as usize);
                    self.wheel.stop(slot);
                    if let Some(gate) = &self.gate {
                        gate.leave();
                    }
                    self.in_table -= 1;
                    self.counters.closed += 1;
                }
            }
            Kind::Refuse => self.in_table -= 1,
            Kind::Wake => self.begin_stop()?,
            Kind::Cancel
            | Kind::Shutdown
            | Kind::SendRegion
            | Kind::Socket
            | Kind::SockOpt
            | Kind::Bind
            | Kind::Connect => {}
        }
        Ok(())
    }

    fn count_send(&mut self, slot: u32, res: i32) {
        if res > 0 {
            self.counters.bytes_out += res as u64;
            self.wheel.progress(slot);
        }
    }

    fn on_accept(&mut self, l: usize, c: &Completion) -> io::Result<()> {
        if !c.more() {
            // A single-shot accept always ends here; a multishot one when it was cancelled
            // or failed. Either way `rearm_accepts` decides what comes next.
            self.accept[l] = Accept::Off;
        }
        if c.res >= 0 && self.gate.as_ref().is_some_and(|g| !g.enter()) {
            // Over the cap: closed at once, before a byte is read.
            self.in_table += 1;
            self.counters.over_cap += 1;
            self.ring
                .close_fixed(c.res as u32, UserData::new(Kind::Refuse, 0, 0))?;
        } else if c.res >= 0 {
            let fixed = c.res as u32;
            self.counters.accepted += 1;
            self.in_table += 1;
            self.next_gen = self.next_gen.wrapping_add(1);
            let generation = self.next_gen & super::ring::GEN_MASK;
            let entry = self.conns.vacant_entry();
            let slot = entry.key() as u32;
            let http = self.http.is_some();
            let mut io = Io {
                ring: &mut self.ring,
                counters: &mut self.counters,
                waiting: &mut self.waiting,
                slot,
                generation,
                fixed,
                err: None,
                http: self.http.as_ref(),
            };
            let conn = entry.insert(Conn::accepted(generation, fixed, http, &mut io));
            if self.aborted {
                conn.abort(&mut io);
            } else if self.deadline.is_some() {
                conn.drain(&mut io);
            }
            if let Some(e) = io.err {
                return Err(e);
            }
            self.wheel.start(slot);
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
                _ => self.counters.refused += 1,
            }
        }
        if self.in_table >= self.multi_limit {
            self.cancel_accepts(true)?;
        }
        Ok(())
    }

    fn on_recv(&mut self, c: &Completion) -> io::Result<()> {
        let (slot, generation) = (c.ud.slot, c.ud.generation);
        let more = c.more();
        match c.buffer() {
            Some(bid) => {
                self.ring.bufs_mut().taken(bid);
                let len = c.res.max(0) as u32;
                if len > 0 {
                    self.counters.recvs += 1;
                    self.counters.bytes_in += u64::from(len);
                }
                let handled = self.with_conn(slot, generation, |conn, io| {
                    if len > 0 {
                        conn.on_data(bid, len, more, io);
                    } else {
                        io.recycle(bid);
                    }
                    (conn.reading_head(), conn.lingering())
                })?;
                match handled {
                    None => self.ring.bufs_mut().recycle(bid),
                    Some((head, lingering)) if len > 0 => {
                        self.wheel.progress(slot);
                        self.wheel.head(slot, head);
                        if lingering {
                            self.wheel.linger(slot);
                        }
                    }
                    Some(_) => {}
                }
                if len > 0 && !more {
                    self.counters.rearms += 1;
                }
                if len == 0 && !more {
                    self.with_conn(slot, generation, |conn, io| conn.on_recv_end(c.res, io))?;
                }
            }
            None => {
                if c.res == -libc::ENOBUFS {
                    self.counters.enobufs += 1;
                }
                self.with_conn(slot, generation, |conn, io| conn.on_recv_end(c.res, io))?;
            }
        }
        Ok(())
    }

    fn begin_stop(&mut self) -> io::Result<()> {
        self.deadline = Some(Instant::now() + self.shutdown_timeout);
        self.cancel_accepts(false)?;
        // Closing our fds makes each listener go away once its accept has ended, so new
        // connections are refused rather than left in a backlog nobody accepts from.
        self.listeners.clear();
        let slots: Vec<(u32, u32)> = self
            .conns
            .iter()
            .map(|(k, c)| (k as u32, c.generation))
            .collect();
        for (slot, generation) in slots {
            self.with_conn(slot, generation, |conn, io| conn.drain(io))?;
        }
        Ok(())
    }

    /// Acts on the deadlines that passed: idle connections are cut; an HTTP head that took
    /// too long is answered 408 and closed (lingering); a lingering close that ran out is cut.
    fn expire(&mut self) -> io::Result<()> {
        self.wheel.expire(&mut self.expired);
        let mut expired = std::mem::take(&mut self.expired);
        for (slot, why) in expired.drain(..) {
            let Some(generation) = self.conns.get(slot as usize).map(|c| c.generation) else {
                debug_assert!(false, "a closed connection's timer is stopped");
                continue;
            };
            match why {
                Expired::Idle => {
                    self.counters.idle_timeouts += 1;
                    self.with_conn(slot, generation, |conn, io| conn.abort(io))?;
                }
                Expired::Header => {
                    self.counters.header_timeouts += 1;
                    self.with_conn(slot, generation, |conn, io| conn.time_out(io))?;
                    self.wheel.linger(slot);
                }
                Expired::Linger => {
                    self.with_conn(slot, generation, |conn, io| conn.abort(io))?;
                }
            }
        }
        self.expired = expired;
        Ok(())
    }

    fn after_turn(&mut self) -> io::Result<()> {
        self.expire()?;
        self.rearm_accepts()?;
        // One waiting connection per buffer available: each re-arm can take at least one.
        let mut budget = self.ring.bufs().available();
        while budget > 0 {
            let Some((slot, generation)) = self.waiting.pop_front() else {
                break;
            };
            let rearmed = self.with_conn(slot, generation, |conn, io| {
                let wanted = conn.wants_buffers();
                conn.rearm(io);
                wanted
            })?;
            if rearmed == Some(true) {
                self.counters.rearms += 1;
                budget -= 1;
            }
        }
        if let Some(deadline) = self.deadline
            && !self.aborted
            && Instant::now() >= deadline
        {
            self.aborted = true;
            let slots: Vec<(u32, u32)> = self
                .conns
                .iter()
                .map(|(k, c)| (k as u32, c.generation))
                .collect();
            for (slot, generation) in slots {
                self.with_conn(slot, generation, |conn, io| conn.abort(io))?;
            }
        }
        self.publish();
        Ok(())
    }
}
