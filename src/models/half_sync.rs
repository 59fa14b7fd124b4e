//! `half-sync-half-reactor`: the notes' Half-Sync/Half-Reactor. The asynchronous half is
//! one I/O thread on epoll (this one): it accepts, waits for readiness and reads each
//! request's bytes. It feeds the synchronous half, a pool of `--threads` workers, through
//! one request queue (a mutex over a deque and a condition variable): a worker takes a
//! request (the connection and the bytes read), does the work (echo: the reply is the
//! request) and writes the reply to the connection itself.
//!
//! Order: connections are EPOLLONESHOT (the rule is in `pool.rs`). Once the I/O thread has
//! read a request, the connection is silent until the worker that took it has written the
//! whole reply and re-armed it: at most one request per connection is in the pool, so
//! replies go out in the order their requests came in, however many workers there are. A
//! reply the socket does not take whole (EAGAIN), and a write or re-arm that fails, go back
//! to the I/O thread through a mailbox that wakes its epoll_wait: it keeps the rest owed,
//! waits for EPOLLOUT, writes it and only then reads again (or closes). So a worker never
//! waits on a socket, and only the I/O thread closes connections, never one a worker holds:
//! while a worker holds one, it has no event.
//!
//! Costs: every request crosses threads once, through the queue's one lock, which the I/O
//! thread and every worker take (the point where they all meet), with a futex wake and a
//! context switch when the worker that takes it was asleep; each read is copied out of the
//! I/O thread's buffer into its request; each reply costs its worker an epoll_ctl to
//! re-arm, on top of the I/O thread's epoll_wait and read.
//!
//! Stop: the listeners and the stop fd leave the epoll set, and every connection's read
//! side is shut (shutdown(2)), so each comes back readable once no worker holds it, and is
//! closed then; what was read is answered first (the queue is worked off, owed replies
//! written). Once none is left the queue closes and the workers are joined.

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

/// A connection, as the I/O thread holds it.
struct Conn {
    fd: OwnedFd,
    /// What a worker could not write (armed for EPOLLOUT while it is not empty).
    owed: Vec<u8>,
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A request the I/O thread read: the bytes, and where the reply goes. The fd stays open
/// while a worker holds it (only the I/O thread closes, and not while the request is out).
struct Request {
    key: Key,
    fd: RawFd,
    bytes: Vec<u8>,
}

/// A reply a worker could not finish, back to the I/O thread.
enum Back {
    /// The rest of the reply, owed: the socket took no more.
    Owed(Key, Vec<u8>),
    /// The write (or the re-arm) failed: the connection ends.
    Failed(Key, io::Error),
}

/// What the I/O thread and the workers share.
struct Shared {
    epfd: RawFd,
    requests: Queue<Request>,
    back: Mailbox<Back>,
}

pub fn run(ctx: Ctx) -> io::Result<()> {
    ctx.stats.call();
    let epoll = sys::epoll_create()?;
    let sh = Shared {
        epfd: epoll.as_raw_fd(),
        requests: Queue::new(),
        back: Mailbox::new(&ctx.stats)?,
    };
    pool::register(&ctx, sh.epfd, libc::EPOLLIN as u32)?;
    pool::add(
        &ctx.stats,
        sh.epfd,
        sh.back.fd(),
        libc::EPOLLIN as u32,
        pool::WAKE,
    )?;
    // Made before the workers start, so that every fd a worker may be writing to outlives
    // them, whatever the I/O thread returns.
    let mut conns = Slab::new();
    thread::scope(|s| {
        let _closing = sh.requests.closing(&ctx.stats);
        for i in 0..ctx.threads {
            pool::spawn(s, &ctx, format!("worker {i}"), || worker(&ctx, &sh))?;
        }
        reactor(&ctx, &sh, &mut conns)
    })
}

/// The asynchronous half.
fn reactor(ctx: &Ctx, sh: &Shared, conns: &mut Slab<Conn>) -> io::Result<()> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut scratch = vec![0; MODEL_BUF_BYTES];
    let mut stopping = false;
    while !(stopping && conns.is_empty()) {
        ctx.stats.call();
        let n = sys::epoll_wait(sh.epfd, &mut events, -1)?;
        for ev in &events[..n] {
            match Token::of(ev.u64) {
                Token::Stop => {
                    stopping = true;
                    stop(ctx, sh.epfd, conns)?;
                }
                // One reported in the same batch as the stop is left alone.
                Token::Listener(i) if !stopping => {
                    pool::accept_all(ctx, sh.epfd, i, conns, |fd| Conn {
                        fd,
                        owed: Vec::new(),
                    })?
                }
                Token::Listener(_) => {}
                Token::Wake => {
                    for back in sh.back.take(&ctx.stats) {
                        handed_back(ctx, sh.epfd, conns, back, stopping);
                    }
                }
                Token::Conn(key) => ready(ctx, sh, conns, key, &mut scratch, stopping),
            }
        }
    }
    Ok(())
}

/// Connection `key` is ready: for the write of what is owed, else for a read, whose bytes
/// become a request.
fn ready(
    ctx: &Ctx,
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
                let bytes = scratch[..n].to_vec();
                sh.requests.push(Request { key, fd, bytes }, &ctx.stats);
                return; // the worker re-arms it, or hands it back
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
    pool::settle(ctx, sh.epfd, conns, key, step, stopping);
}

/// A worker's reply came back unfinished.
fn handed_back(ctx: &Ctx, epfd: RawFd, conns: &mut Slab<Conn>, back: Back, stopping: bool) {
    let (key, step) = match back {
        Back::Owed(key, rest) => {
            if let Some(conn) = conns.get_mut(key) {
                conn.owed = rest;
            }
            (key, Step::Write)
        }
        Back::Failed(key, e) => (key, Step::Close(Some(e))),
    };
    pool::settle(ctx, epfd, conns, key, step, stopping);
}

/// No more accepting, and every connection's read side shut: each comes back readable (a
/// worker's re-arm included) and is closed then, its owed reply written first.
fn stop(ctx: &Ctx, epfd: RawFd, conns: &Slab<Conn>) -> io::Result<()> {
    pool::unregister(ctx, epfd)?;
    for (_, conn) in conns.iter() {
        ctx.stats.call();
        // ENOTCONN: the peer has reset it, and its event is already pending.
        let _ = sys::shutdown_read(conn.fd.as_raw_fd());
    }
    Ok(())
}

/// The synchronous half: takes requests until the queue closes; writes each reply, then
/// re-arms the connection for its next read.
fn worker(ctx: &Ctx, sh: &Shared) {
    while let Some(Request { key, fd, mut bytes }) = sh.requests.pop(&ctx.stats) {
        // Echo's work: the reply is the request.
        let back = match pool::write_some(fd, &bytes, &ctx.stats) {
            Ok(n) if n == bytes.len() => {
                match pool::arm(&ctx.stats, sh.epfd, fd, pool::READ, key.token()) {
                    Ok(()) => continue, // the last this worker touches of the connection
                    Err(e) => Back::Failed(key, e),
                }
            }
            Ok(n) => {
                bytes.drain(..n);
                Back::Owed(key, bytes)
            }
            Err(e) => Back::Failed(key, e),
        };
        sh.back.post(back, &ctx.stats);
    }
}
