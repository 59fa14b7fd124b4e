//! `sigio`: signal-driven I/O, as the C10K-era servers (phhttpd, the "RT signals" papers)
//! did it. Every listener and connection is non-blocking and O_ASYNC, owned by this thread
//! (F_SETOWN_EX, F_OWNER_TID) and raising one real-time signal (F_SETSIG), blocked here and
//! taken with sigwaitinfo(2): each carries the fd (`si_fd`) and its poll bits (`si_band`),
//! so there is no interest set to scan and no poll call per wakeup.
//!
//! The rules every handler follows:
//! - A signal says an fd's readiness changed, once (like an edge): a listener is accepted
//!   from until EAGAIN, a readable connection is drained until EAGAIN, a writable one
//!   flushed; a new connection is drained at once (data may have come before O_ASYNC).
//! - Any signal may be stale: queued for an fd since closed, whose number was reused. State
//!   is kept by fd number, reset at accept and close, and every handler only tries
//!   non-blocking calls, so a stale signal costs one EAGAIN at most; one for an fd not in the
//!   table is dropped.
//! - When the queue is full (RLIMIT_SIGPENDING) the kernel sends SIGIO instead, which is
//!   taken before the queued real-time signals (sigwaitinfo takes the lowest number first):
//!   the queue is discarded (its events are stale now) and one poll(2) of every fd serves
//!   what is ready, counted as `overflows`.
//!
//! Its costs: three fcntl calls to set up each connection, and a sigwaitinfo per readiness
//! event (one per arriving segment, where epoll coalesces); on overflow, a poll of every fd.
//! The stop is a SIGIO sent to this thread (tgkill): unlike a real-time signal it is never
//! refused when the queue is full. Then listeners close, connections that owe nothing close,
//! and the others are flushed first.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use super::Ctx;
use super::echo::{Echo, Step};
use super::stats::Field;
use crate::plan::MODEL_BUF_BYTES;
use crate::sys::{self, sigio};

/// The real-time signal of every fd. libc's SIGRTMIN() is glibc's first free one (34: glibc
/// keeps the kernel's 32 and 33 for thread cancellation and setxid); +1 leaves SIGRTMIN to
/// anything else in the process.
fn io_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

const READABLE: i16 = libc::POLLIN | libc::POLLERR | libc::POLLHUP;
const WRITABLE: i16 = libc::POLLOUT | libc::POLLERR | libc::POLLHUP;

enum Slot {
    Free,
    Listener(OwnedFd),
    Conn(OwnedFd, Echo),
}

pub fn run(mut ctx: Ctx) -> io::Result<()> {
    let sig = io_signal();
    ctx.stats.call();
    let waited = sigio::block(&[sig, libc::SIGIO])?;
    // The stop hook signals this thread while it runs, never after (the lock).
    let me = Arc::new(Mutex::new(Some(sys::gettid())));
    let _gone = Gone(me.clone());
    ctx.stop.on_stop(Box::new(move || {
        if let Some(tid) = *me.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = sigio::tgkill(tid, libc::SIGIO);
        }
    }));
    let listeners = std::mem::take(&mut ctx.listeners);
    let mut m = Model {
        slots: Vec::new(),
        conns: 0,
        stopping: false,
        scratch: vec![0; MODEL_BUF_BYTES],
        polled: Vec::new(),
        sig,
        tid: sys::gettid(),
        ctx: &ctx,
    };
    let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    for l in listeners {
        m.arm(l.as_raw_fd())?;
        m.put(l.as_raw_fd(), Slot::Listener(l));
    }
    for fd in fds {
        m.accept_all(fd)?;
    }
    loop {
        if m.stopping && m.conns == 0 {
            return Ok(());
        }
        ctx.stats.call();
        let Some(s) = sigio::wait(&waited)? else {
            continue;
        };
        if s.signo == libc::SIGIO {
            // The kernel's (SI_KERNEL), or the stop's (tgkill: SI_USER on Linux 6.18).
            if s.code == libc::SI_KERNEL {
                ctx.stats.add(Field::Overflows, 1);
            }
            ctx.stats.add(Field::Syscalls, 2);
            sigio::discard_queued(sig)?;
            if ctx.stop.is_set() && !m.stopping {
                m.begin_stop();
            }
            m.sweep()?;
        } else if s.signo == sig && sigio::POLL_CODES.contains(&s.code) {
            m.dispatch(s.fd, s.band as i16)?;
        }
    }
}

/// Clears the thread id the stop hook signals, when `run` returns.
struct Gone(Arc<Mutex<Option<u32>>>);

impl Drop for Gone {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

struct Model<'a> {
    /// By fd number.
    slots: Vec<Slot>,
    conns: usize,
    stopping: bool,
    scratch: Vec<u8>,
    polled: Vec<libc::pollfd>,
    sig: i32,
    tid: u32,
    ctx: &'a Ctx,
}

impl Model<'_> {
    /// Owner, signal, then O_ASYNC: no signal can come before it has somewhere to go.
    fn arm(&self, fd: RawFd) -> io::Result<()> {
        self.ctx.stats.add(Field::Syscalls, 3);
        sigio::set_owner_thread(fd, self.tid)?;
        sigio::set_signal(fd, self.sig)?;
        sigio::set_async(fd)
    }

    fn put(&mut self, fd: RawFd, slot: Slot) {
        let i = fd as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || Slot::Free);
        }
        self.slots[i] = slot;
    }

    /// An fd's readiness changed (`band`: poll bits), as a signal or the overflow's poll said.
    fn dispatch(&mut self, fd: RawFd, band: i16) -> io::Result<()> {
        let stopping = self.stopping;
        let step = match self.slots.get_mut(fd as usize) {
            Some(Slot::Listener(l)) => {
                let l = l.as_raw_fd();
                return self.accept_all(l);
            }
            Some(Slot::Conn(sock, echo)) => on_event(
                echo,
                sock.as_raw_fd(),
                band,
                &mut self.scratch,
                self.ctx,
                stopping,
            ),
            // Stale: the fd closed since it was queued.
            _ => return Ok(()),
        };
        if let Step::Close(err) = step {
            self.close(fd, err);
        }
        Ok(())
    }

    fn accept_all(&mut self, listener: RawFd) -> io::Result<()> {
        while !self.stopping {
            self.ctx.stats.call();
            let conn = match sys::accept_nonblocking(listener) {
                Ok(c) => c,
                Err(e) => {
                    // Another may wait behind an aborted one; at EMFILE and the like, the
                    // next signal tries again.
                    let again = e.raw_os_error() == Some(libc::ECONNABORTED);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return Ok(());
                    }
                    self.ctx.accept_failed(e)?;
                    if again {
                        continue;
                    }
                    return Ok(());
                }
            };
            if !self.ctx.admit() {
                self.ctx.stats.call();
                continue;
            }
            let fd = conn.as_raw_fd();
            if let Err(e) = self.arm(fd) {
                self.ctx.stats.call();
                drop(conn);
                self.ctx.closed(Some(&e));
                continue;
            }
            self.put(fd, Slot::Conn(conn, Echo::default()));
            self.conns += 1;
            self.dispatch(fd, libc::POLLIN)?;
        }
        Ok(())
    }

    fn close(&mut self, fd: RawFd, err: Option<io::Error>) {
        self.ctx.stats.call();
        self.slots[fd as usize] = Slot::Free;
        self.conns -= 1;
        self.ctx.closed(err.as_ref());
    }

    /// Stop accepting; close what owes nothing; the rest are closed once flushed.
    fn begin_stop(&mut self) {
        self.stopping = true;
        for fd in 0..self.slots.len() {
            match &self.slots[fd] {
                Slot::Listener(_) => {
                    self.ctx.stats.call();
                    self.slots[fd] = Slot::Free;
                }
                Slot::Conn(_, echo) if !echo.owes() => self.close(fd as RawFd, None),
                _ => {}
            }
        }
    }

    /// The queue overflowed (or the stop came): one poll of every fd, each ready one served.
    fn sweep(&mut self) -> io::Result<()> {
        let mut polled = std::mem::take(&mut self.polled);
        polled.clear();
        polled.extend(self.slots.iter().enumerate().filter_map(|(fd, s)| {
            let events = match s {
                Slot::Free => return None,
                Slot::Listener(_) => libc::POLLIN,
                Slot::Conn(_, echo) if echo.owes() => libc::POLLOUT,
                Slot::Conn(..) => libc::POLLIN,
            };
            Some(libc::pollfd {
                fd: fd as RawFd,
                events,
                revents: 0,
            })
        }));
        self.ctx.stats.call();
        sys::poll(&mut polled, 0)?;
        // An fd closed and reused while this runs gets its predecessor's bits: stale, and
        // harmless as any stale signal.
        for p in polled.iter().filter(|p| p.revents != 0) {
            self.dispatch(p.fd, p.revents)?;
        }
        self.polled = polled;
        Ok(())
    }
}

/// Serves connection `fd` on poll bits `band`: flushes what is owed if writable; then, owing
/// nothing, drains it if readable or just flushed (its read edge may have passed while it
/// owed, since nothing is read then); stopping, closes it instead.
fn on_event(
    echo: &mut Echo,
    fd: RawFd,
    band: i16,
    scratch: &mut [u8],
    ctx: &Ctx,
    stopping: bool,
) -> Step {
    let mut readable = band & READABLE != 0;
    if echo.owes() {
        if band & WRITABLE == 0 {
            return Step::Write;
        }
        match echo.on_writable(fd, &ctx.stats) {
            Step::Read => readable = true,
            other => return other,
        }
    }
    if stopping {
        return Step::Close(None);
    }
    if !readable {
        return Step::Read;
    }
    echo.on_readable(fd, scratch, &ctx.stats, true)
}
