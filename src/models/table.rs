//! What the level-triggered models (select, poll, epoll-lt) share: a connection (its
//! socket and its echo state), the accept batch, and the counted close.
//!
//! The level-triggered rule, once: a wait reports an fd for as long as it is ready, not
//! once per change, so a handler does one step and returns, and what it left is reported
//! again at the next wait. A connection does one read per round (`drain: false`), and a
//! listener at most `ACCEPT_BATCH` accepts: a fast sender or a burst of connections cannot
//! starve the others, and nothing is lost by stopping early. Whatever a connection waits
//! for follows from its echo state: readable while nothing is owed, writable while output
//! is owed (and nothing more is read until it has gone). A syscall interrupted by a signal
//! (EINTR) is made again, or, for the wait, counts as a round with nothing ready.
//!
//! The stop, once: when the stop eventfd is readable the model stops watching it and the
//! listeners (it is never read, so it would be reported at every wait), closes every
//! connection that owes nothing, and goes on serving the others until each has written
//! what it owed, then closes it; it returns when none is left. A peer that never reads
//! keeps it waiting: model-server cuts it at --shutdown-timeout.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::Ctx;
use super::echo::{Echo, Step};
use super::stats::Stats;
use crate::sys;

/// Accepts per listener per round. The listener stays readable while its queue holds
/// more, so the rest wait for the next round, after the connections have had their turn.
pub const ACCEPT_BATCH: usize = 64;

/// A non-blocking connection.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
    echo: Echo,
}

impl Conn {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether output is owed: the connection waits to be writable, else readable.
    pub fn owes(&self) -> bool {
        self.echo.owes()
    }

    /// The socket is ready for what it waits for: one read (written straight back), or
    /// one write of what is owed. While the model stops, a connection that has written all
    /// it owed is done (`Close`).
    pub fn on_ready(&mut self, scratch: &mut [u8], stats: &Stats, stopping: bool) -> Step {
        let fd = self.fd.as_raw_fd();
        let step = if self.echo.owes() {
            self.echo.on_writable(fd, stats)
        } else {
            self.echo.on_readable(fd, scratch, stats, false)
        };
        match step {
            Step::Read if stopping => Step::Close(None),
            step => step,
        }
    }
}

/// Accepts on the non-blocking `listener` until EAGAIN, at most `ACCEPT_BATCH` times:
/// the new sockets (non-blocking), not yet admitted. Accept errors go through
/// `ctx.accept_failed`; one it does not take ends the batch with that error.
pub fn accepts(ctx: &Ctx, listener: RawFd) -> impl Iterator<Item = io::Result<OwnedFd>> + '_ {
    let mut left = ACCEPT_BATCH;
    std::iter::from_fn(move || {
        while left > 0 {
            left -= 1;
            ctx.stats.call();
            match sys::accept_nonblocking(listener) {
                Ok(fd) => return Some(Ok(fd)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if let Err(e) = ctx.accept_failed(e) {
                        left = 0;
                        return Some(Err(e));
                    }
                }
            }
        }
        left = 0;
        None
    })
}

/// `fd` was accepted: the connection, if `ctx.admit` lets it stay; else it is closed.
pub fn admit(ctx: &Ctx, fd: OwnedFd) -> Option<Conn> {
    if ctx.admit() {
        return Some(Conn {
            fd,
            echo: Echo::default(),
        });
    }
    close_fd(ctx, fd);
    None
}

/// Closes an admitted connection, counted, with the error it ended in, if any.
pub fn close(ctx: &Ctx, conn: Conn, err: Option<io::Error>) {
    close_fd(ctx, conn.fd);
    ctx.closed(err.as_ref());
}

/// close(2), counted.
pub fn close_fd(ctx: &Ctx, fd: OwnedFd) {
    ctx.stats.call();
    drop(fd);
}
