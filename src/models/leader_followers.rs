//! `leader-followers`: the notes' Leader/Followers. A pool of `--threads` threads (this one
//! among them) shares one epoll set and takes turns at it: one thread, the leader, waits in
//! epoll_wait while the others, the followers, sleep on a condition variable. When the
//! leader gets an event, it first promotes a follower to leader, then serves the event
//! itself (accept, or a read and the echo's write), re-arms what it served and rejoins the
//! followers. No event, and no data, is handed from thread to thread: the thread that got
//! the event serves it.
//!
//! One event per epoll_wait (`EVENTS`): a leader serves what it took only after it has
//! handed on the role, and with EPOLLONESHOT no other thread sees those events, so with
//! more per wait the extra ones would wait behind each other in one thread while followers
//! sleep. With one, every ready connection goes to a thread as soon as one is free.
//!
//! Order: connections are EPOLLONESHOT (`pool.rs`), so only the thread that took a
//! connection's event serves it, and re-arms it only when done; the listeners and the stop
//! fd are ONESHOT too, and a listener is re-armed once its thread has accepted until
//! EAGAIN. The connection table is shared, under a lock: a thread takes the connection out
//! (its slot is marked busy), serves it without the lock, puts it back, then re-arms it.
//! Only the thread holding a connection closes it, so the fd it re-arms is still its own.
//!
//! Costs: every event is a handoff of the role (the roles' lock, a futex wake of a follower
//! and a context switch onto it) plus an epoll_wait and an epoll_ctl, and two takes of the
//! table's lock, which all threads share. Nothing is queued or copied between threads.
//!
//! Stop: the leader that sees the stop shuts the read side of every connection in the
//! table, so each comes back readable and is closed then (a busy one: when its thread puts
//! it back), owed output written first; the listeners are not re-armed. Once none is left,
//! the followers are woken, and so is the leader, by an eventfd of the pool's own.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Condvar, Mutex};
use std::thread;

use super::Ctx;
use super::echo::{Echo, Step};
use super::pool::{self, Accepted, Key, Slab, Token, lock};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

/// Events one epoll_wait takes (why one: the module doc).
const EVENTS: usize = 1;
/// The listeners and the stop fd: one thread at a time takes each.
const ONCE: u32 = (libc::EPOLLIN | libc::EPOLLONESHOT) as u32;

struct Conn {
    fd: OwnedFd,
    echo: Echo,
}

/// A slot of the connection table.
enum Entry {
    Here(Conn),
    /// A thread has taken it out to serve it.
    Busy,
}

struct Table {
    conns: Slab<Entry>,
    stopping: bool,
}

struct Roles {
    leader: bool,
    /// Followers asleep on `Pool::followers`.
    asleep: usize,
    /// Every thread ends.
    done: bool,
}

struct Pool<'a> {
    ctx: &'a Ctx,
    epfd: RawFd,
    table: Mutex<Table>,
    roles: Mutex<Roles>,
    followers: Condvar,
    /// Readable once the pool is done: wakes the leader from epoll_wait (token `WAKE`).
    end: OwnedFd,
}

pub fn run(ctx: Ctx) -> io::Result<()> {
    ctx.stats.call();
    let epoll = sys::epoll_create()?;
    ctx.stats.call();
    let pool = Pool {
        ctx: &ctx,
        epfd: epoll.as_raw_fd(),
        table: Mutex::new(Table {
            conns: Slab::new(),
            stopping: false,
        }),
        roles: Mutex::new(Roles {
            leader: false,
            asleep: 0,
            done: false,
        }),
        followers: Condvar::new(),
        end: sys::eventfd()?,
    };
    pool::register(&ctx, pool.epfd, ONCE)?;
    let end = pool.end.as_raw_fd();
    pool::add(&ctx.stats, pool.epfd, end, libc::EPOLLIN as u32, pool::WAKE)?;
    thread::scope(|s| {
        // This thread is one of the pool: `--threads` in all, as planned.
        let mut threads = Vec::with_capacity(ctx.threads - 1);
        for i in 1..ctx.threads {
            match pool::spawn(s, &ctx, format!("lf {i}"), || pool.follow()) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    pool.finish();
                    return Err(e);
                }
            }
        }
        let mine = pool.follow();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .fold(mine, io::Result::and)
    })
}

impl Pool<'_> {
    /// One thread of the pool, until the pool is done; on an error, it ends them all.
    fn follow(&self) -> io::Result<()> {
        let r = self.turns();
        if r.is_err() {
            self.finish();
        }
        r
    }

    fn turns(&self) -> io::Result<()> {
        let stats = &self.ctx.stats;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut scratch = vec![0; MODEL_BUF_BYTES];
        while self.lead() {
            stats.call();
            let got = sys::epoll_wait(self.epfd, &mut events, -1);
            self.promote();
            for ev in &events[..got?] {
                match Token::of(ev.u64) {
                    Token::Stop => self.stop(),
                    Token::Listener(i) => self.accept(i)?,
                    Token::Conn(key) => self.serve(key, &mut scratch),
                    Token::Wake => {} // done: `lead` says so
                }
            }
        }
        Ok(())
    }

    /// Waits as a follower until this thread may lead: false once the pool is done.
    fn lead(&self) -> bool {
        let mut roles = lock(&self.roles);
        while roles.leader && !roles.done {
            roles.asleep += 1;
            self.ctx.stats.call();
            roles = self
                .followers
                .wait(roles)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            roles.asleep -= 1;
        }
        roles.leader = !roles.done;
        roles.leader
    }

    /// Hands the role to a follower, before the event taken is served.
    fn promote(&self) {
        let wake = {
            let mut roles = lock(&self.roles);
            roles.leader = false;
            roles.asleep > 0
        };
        if wake {
            self.ctx.stats.call();
            self.followers.notify_one();
        }
    }

    /// Ends every thread: the followers now, the leader once epoll_wait returns.
    fn finish(&self) {
        lock(&self.roles).done = true;
        self.ctx.stats.call();
        self.followers.notify_all();
        self.ctx.stats.call();
        // Fails only if the counter would pass 2^64 - 2, when it is readable anyway.
        let _ = sys::eventfd_wake(self.end.as_raw_fd());
    }

    /// Accepts from listener `i` until EAGAIN, then re-arms it (not at the stop).
    fn accept(&self, i: usize) -> io::Result<()> {
        let Some(listener) = self.ctx.listeners.get(i) else {
            return Ok(());
        };
        loop {
            match pool::accept(self.ctx, listener.as_raw_fd())? {
                Accepted::Conn(fd) => {
                    if !self.admit(fd) {
                        return Ok(()); // the stop: left disarmed
                    }
                }
                Accepted::Dropped => {}
                Accepted::Drained => break,
            }
        }
        let token = pool::listener_token(i);
        pool::arm(
            &self.ctx.stats,
            self.epfd,
            listener.as_raw_fd(),
            ONCE,
            token,
        )
    }

    /// Puts a new connection in the table and arms it for its first read: false at the
    /// stop, when it is closed instead.
    fn admit(&self, fd: OwnedFd) -> bool {
        let raw = fd.as_raw_fd();
        let key = {
            let mut table = lock(&self.table);
            if table.stopping {
                drop(table);
                pool::close(self.ctx, fd, None);
                return false;
            }
            table.conns.insert(Entry::Here(Conn {
                fd,
                echo: Echo::default(),
            }))
        };
        // Added once it is in the table, so that whoever takes its first event finds it.
        if let Err(e) = pool::add(&self.ctx.stats, self.epfd, raw, pool::READ, key.token()) {
            self.remove(key, Some(e));
        }
        true
    }

    /// Serves connection `key`'s event: the owed write, else a read and its echo.
    fn serve(&self, key: Key, scratch: &mut [u8]) {
        let Some((mut conn, stopping)) = self.take(key) else {
            return; // a late event for a connection closed since
        };
        let fd = conn.fd.as_raw_fd();
        let stats = &self.ctx.stats;
        let step = if conn.echo.owes() {
            conn.echo.on_writable(fd, stats)
        } else if stopping {
            Step::Close(None)
        } else {
            conn.echo.on_readable(fd, scratch, stats, false)
        };
        self.put_back(key, conn, step);
    }

    /// Takes connection `key` out of the table (marked busy), and whether the pool stops.
    fn take(&self, key: Key) -> Option<(Conn, bool)> {
        let mut table = lock(&self.table);
        let stopping = table.stopping;
        match std::mem::replace(table.conns.get_mut(key)?, Entry::Busy) {
            Entry::Here(conn) => Some((conn, stopping)),
            Entry::Busy => None, // not while ONESHOT holds: one event per arming
        }
    }

    /// Puts a served connection back and re-arms it for what it waits for next, or closes
    /// it (at the stop: instead of another read).
    fn put_back(&self, key: Key, conn: Conn, step: Step) {
        let mut table = lock(&self.table);
        let (events, err) = match step {
            Step::Read if !table.stopping => (pool::READ, None),
            Step::Write => (pool::WRITE, None),
            Step::Read => (0, None),
            Step::Close(e) => (0, e),
        };
        if events == 0 {
            table.conns.remove(key);
            self.closed(table, conn, err);
            return;
        }
        let fd = conn.fd.as_raw_fd();
        if let Some(entry) = table.conns.get_mut(key) {
            *entry = Entry::Here(conn);
        }
        drop(table);
        // Re-armed once it is back, so that whoever takes its next event finds it; nothing
        // closes it before: only a thread that took an event for it does.
        if let Err(e) = pool::arm(&self.ctx.stats, self.epfd, fd, events, key.token()) {
            self.remove(key, Some(e));
        }
    }

    /// Closes connection `key`, in the table and unarmed.
    fn remove(&self, key: Key, err: Option<io::Error>) {
        let mut table = lock(&self.table);
        if let Some(Entry::Here(conn)) = table.conns.remove(key) {
            self.closed(table, conn, err);
        }
    }

    /// Closes `conn`, out of the table now; the last at the stop ends the pool.
    fn closed(&self, table: std::sync::MutexGuard<'_, Table>, conn: Conn, err: Option<io::Error>) {
        let done = table.stopping && table.conns.is_empty();
        drop(table);
        pool::close(self.ctx, conn, err);
        if done {
            self.finish();
        }
    }

    /// The stop, seen by one leader (the stop fd is ONESHOT and not re-armed).
    fn stop(&self) {
        let mut table = lock(&self.table);
        table.stopping = true;
        for (_, entry) in table.conns.iter() {
            if let Entry::Here(conn) = entry {
                self.ctx.stats.call();
                // ENOTCONN: the peer has reset it, and its event is already pending.
                let _ = sys::shutdown_read(conn.fd.as_raw_fd());
            }
        }
        let done = table.conns.is_empty();
        drop(table);
        if done {
            self.finish();
        }
    }
}
