//! `sim-proactor`: the notes' simulated Proactor, as Boost.Asio builds one on Linux, where
//! epoll offers readiness and not completion. The main thread (this one) plays the kernel
//! of a real Proactor: it waits on epoll and performs every read and write itself. A read
//! that completes becomes a read completion (the connection and the bytes) on the worker
//! pool's completion queue (a mutex over a deque and a condition variable); a worker runs
//! its completion handler (echo: ask for a write of the same bytes), which posts the write
//! request back to the main thread (a mailbox whose eventfd wakes its epoll_wait). The main
//! thread performs the write, keeping the rest owed on a short write (EPOLLOUT), and once
//! it has all gone starts the connection's next read.
//!
//! Order holds by construction: a connection has one operation in flight at a time, a
//! read, its handler, or its write, each begun only when the one before has completed; its
//! fd is EPOLLONESHOT, armed for that read or that write only (`pool.rs`).
//!
//! Costs: each request crosses threads twice, to a worker and back, through two locks (the
//! completion queue's, which every thread takes, and the mailbox's) and, when the other
//! side sleeps, a futex wake or an eventfd write and a context switch; each read is copied
//! into its completion. The handler's work runs off the main thread, but the I/O does not:
//! the main thread's epoll_wait, reads, writes and re-arms bound the whole server, as they
//! do in the Reactor, with the round trip on top.
//!
//! Stop: the listeners and the stop fd leave the epoll set; a connection waiting for a read
//! is closed at once; one whose data is with a worker, or whose write is owed, is closed
//! once its write has gone. Once none is left the queue closes and the workers are joined.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::thread;

use super::Ctx;
use super::echo::{self, Step};
use super::pool::{self, Key, Mailbox, Queue, Slab, Token};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

/// Events one epoll_wait takes at most; more wait for the next.
const EVENTS: usize = 64;

/// A connection, as the main thread holds it.
struct Conn {
    fd: OwnedFd,
    /// Its read completed and is with the handlers: nothing else is in flight.
    at_worker: bool,
    /// The write in flight, as far as it has not gone (armed for EPOLLOUT while it is not
    /// empty).
    owed: Vec<u8>,
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A read that completed, for its handler.
struct Completion {
    key: Key,
    bytes: Vec<u8>,
}

/// A write a handler asks for.
struct WriteOp {
    key: Key,
    bytes: Vec<u8>,
}

/// What the main thread and the workers share.
struct Shared {
    completions: Queue<Completion>,
    writes: Mailbox<WriteOp>,
}

pub fn run(ctx: Ctx) -> io::Result<()> {
    ctx.stats.call();
    let epoll = sys::epoll_create()?;
    let epfd = epoll.as_raw_fd();
    let sh = Shared {
        completions: Queue::new(),
        writes: Mailbox::new(&ctx.stats)?,
    };
    pool::register(&ctx, epfd, libc::EPOLLIN as u32)?;
    pool::add(
        &ctx.stats,
        epfd,
        sh.writes.fd(),
        libc::EPOLLIN as u32,
        pool::WAKE,
    )?;
    let mut conns = Slab::new();
    thread::scope(|s| {
        let _closing = sh.completions.closing(&ctx.stats);
        for i in 0..ctx.threads {
            pool::spawn(s, &ctx, format!("worker {i}"), || worker(&ctx, &sh))?;
        }
        proactor(&ctx, epfd, &sh, &mut conns)
    })
}

/// The main thread: readiness in, operations performed, completions out.
fn proactor(ctx: &Ctx, epfd: RawFd, sh: &Shared, conns: &mut Slab<Conn>) -> io::Result<()> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut scratch = vec![0; MODEL_BUF_BYTES];
    let mut stopping = false;
    while !(stopping && conns.is_empty()) {
        ctx.stats.call();
        let n = sys::epoll_wait(epfd, &mut events, -1)?;
        for ev in &events[..n] {
            match Token::of(ev.u64) {
                Token::Stop => {
                    stopping = true;
                    stop(ctx, epfd, conns)?;
                }
                // One reported in the same batch as the stop is left alone.
                Token::Listener(i) if !stopping => {
                    pool::accept_all(ctx, epfd, i, conns, |fd| Conn {
                        fd,
                        at_worker: false,
                        owed: Vec::new(),
                    })?
                }
                Token::Listener(_) => {}
                Token::Wake => {
                    for op in sh.writes.take(&ctx.stats) {
                        write_requested(ctx, epfd, conns, op, stopping);
                    }
                }
                Token::Conn(key) => ready(ctx, epfd, sh, conns, key, &mut scratch, stopping),
            }
        }
    }
    Ok(())
}

/// Connection `key` is ready for the operation in flight: the rest of its write, or its
/// read, whose completion goes to the handlers.
fn ready(
    ctx: &Ctx,
    epfd: RawFd,
    sh: &Shared,
    conns: &mut Slab<Conn>,
    key: Key,
    scratch: &mut [u8],
    stopping: bool,
) {
    let Some(conn) = conns.get_mut(key) else {
        return; // a late event for a connection closed since
    };
    let fd = conn.fd.as_raw_fd();
    let step = if !conn.owed.is_empty() {
        pool::flush(fd, &mut conn.owed, &ctx.stats)
    } else if stopping {
        Step::Close(None)
    } else {
        match echo::read(fd, scratch, &ctx.stats) {
            Ok(0) => Step::Close(None),
            Ok(n) => {
                conn.at_worker = true;
                let bytes = scratch[..n].to_vec();
                sh.completions.push(Completion { key, bytes }, &ctx.stats);
                return; // its write request comes back
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Step::Read
            }
            Err(e) => Step::Close(Some(e)),
        }
    };
    pool::settle(ctx, epfd, conns, key, step, stopping);
}

/// A handler asked for a write: performed now, as far as the socket takes it.
fn write_requested(ctx: &Ctx, epfd: RawFd, conns: &mut Slab<Conn>, op: WriteOp, stopping: bool) {
    let Some(conn) = conns.get_mut(op.key) else {
        return;
    };
    conn.at_worker = false;
    conn.owed = op.bytes;
    let step = pool::flush(conn.fd.as_raw_fd(), &mut conn.owed, &ctx.stats);
    pool::settle(ctx, epfd, conns, op.key, step, stopping);
}

/// No more accepting; the connections waiting for a read close now, the others once their
/// write has gone.
fn stop(ctx: &Ctx, epfd: RawFd, conns: &mut Slab<Conn>) -> io::Result<()> {
    pool::unregister(ctx, epfd)?;
    let idle: Vec<Key> = conns
        .iter()
        .filter(|(_, c)| !c.at_worker && c.owed.is_empty())
        .map(|(key, _)| key)
        .collect();
    for key in idle {
        pool::settle(ctx, epfd, conns, key, Step::Close(None), true);
    }
    Ok(())
}

/// Runs completion handlers until the queue closes.
fn worker(ctx: &Ctx, sh: &Shared) {
    while let Some(Completion { key, bytes }) = sh.completions.pop(&ctx.stats) {
        // Echo's handler: write back what was read.
        sh.writes.post(WriteOp { key, bytes }, &ctx.stats);
    }
}
