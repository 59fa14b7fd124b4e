//! `posix-aio`: the notes' Proactor example with POSIX AIO. Each connection has one request
//! in flight: an aio_read of its buffer; at its completion an aio_write of what was read
//! (again from the rest after a short write); at that one's, the next aio_read. A read of 0
//! closes it, an error closes it as failed. Reading and writing never overlap on one
//! socket: glibc runs one fd's requests one after another, so a write queued behind a read
//! that waits for the peer would wait as long.
//!
//! glibc's AIO is threads (see `sys::aio`): a pending read on a socket holds a helper thread
//! blocked in read(2) until data comes, so glibc is let run one per connection
//! (`aio_init`'s aio_threads = the planned --max-conns; past it, a request waits for a
//! helper to free up, which on idle sockets may be never), and the summary's `threads_max`
//! shows them: the plan's thread wall is this model's. A helper reads with pread first,
//! which a socket refuses (ESPIPE), then read: two system calls per request there, not
//! counted here (`Syscalls` counts the model's own, each aio_* call as one).
//!
//! Completion by signal, SIGEV_SIGNAL with the connection's slot as `si_value`, taken by a
//! handler that writes it to a pipe, polled here with the stop's eventfd and the blocking
//! listeners (accept as `iterative` does). Not sigwaitinfo nor a signalfd: glibc signals the
//! process, not this thread, and model-server's supervisor thread does not block the signal,
//! so its default action (terminate) ran there (measured). Not SIGEV_THREAD: glibc starts a
//! thread per completion with every signal unblocked, where a SIGTERM meant for the
//! supervisor could land and kill the process. The handler runs on that supervisor thread,
//! the one that does not block the signal: each completion interrupts its wait.
//!
//! Stop: accepting ends; writes in flight complete (and a short one is finished); reads are
//! cancelled (aio_cancel), and one a helper already runs, which cannot be, is ended by
//! shutdown(SHUT_RD): its read returns 0. Each connection closes at its request's end.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::Ctx;
use super::stats::Field;
use crate::plan::MODEL_BUF_BYTES;
use crate::sys::{self, aio, sigio};

/// The completion signal: glibc's first free real-time signal + 2 (see `sigio`'s +1).
fn aio_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

/// The request a connection has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// Bytes `from..to` of the buffer, what the last read put there.
    Write {
        from: usize,
        to: usize,
    },
}

/// What follows a completion.
#[derive(Debug)]
enum Next {
    Submit(Op),
    Close(Option<io::Error>),
}

/// The connection's state machine: what `op`'s completion with `result` leads to.
fn next(op: Op, result: io::Result<usize>, stopping: bool) -> Next {
    match (op, result) {
        // The stop cancelled it.
        (_, Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => Next::Close(None),
        (_, Err(e)) => Next::Close(Some(e)),
        (Op::Read, Ok(0)) => Next::Close(None),
        (Op::Read, Ok(n)) => Next::Submit(Op::Write { from: 0, to: n }),
        (Op::Write { from, to }, Ok(0)) if from < to => {
            Next::Close(Some(io::ErrorKind::WriteZero.into()))
        }
        (Op::Write { from, to }, Ok(n)) if from + n < to => {
            Next::Submit(Op::Write { from: from + n, to })
        }
        (Op::Write { .. }, Ok(_)) if stopping => Next::Close(None),
        (Op::Write { .. }, Ok(_)) => Next::Submit(Op::Read),
    }
}

struct Conn {
    stream: aio::Stream,
    op: Op,
}

pub fn run(mut ctx: Ctx) -> io::Result<()> {
    let sig = aio_signal();
    // Blocked here, so the handler never runs on this thread, the pipe's only reader.
    ctx.stats.call();
    sigio::block(&[sig])?;
    ctx.stats.call();
    aio::init(ctx.plan.max_conns, ctx.plan.max_conns);
    ctx.stats.add(Field::Syscalls, 2);
    let notes = aio::notifier(sig)?;
    let mut listeners = std::mem::take(&mut ctx.listeners);
    let mut waits: Vec<libc::pollfd> = [ctx.stop.fd(), notes.fd()]
        .into_iter()
        .chain(listeners.iter().map(|l| l.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut conns = Conns {
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        stopping: false,
        sig,
        ctx: &ctx,
    };
    let mut tokens = vec![0u64; 1024];
    loop {
        if conns.stopping && conns.live == 0 {
            return Ok(());
        }
        ctx.stats.call();
        sys::poll(&mut waits, -1)?;
        if ctx.stop.is_set() && !conns.stopping {
            ctx.stats.add(Field::Syscalls, listeners.len() as u64);
            listeners.clear();
            waits.truncate(2);
            waits[0].fd = -1; // the eventfd stays readable: poll skips it from now
            conns.stop();
        }
        if waits[1].revents != 0 {
            ctx.stats.call();
            let n = notes.take(&mut tokens)?;
            for &token in &tokens[..n] {
                conns.complete(token as usize);
            }
        }
        for w in waits[2..].iter().filter(|w| w.revents != 0) {
            ctx.stats.call();
            match sys::accept(w.fd) {
                Ok(sock) if ctx.admit() => conns.open(sock),
                Ok(_) => ctx.stats.call(),
                Err(e) => ctx.accept_failed(e)?,
            }
        }
    }
}

/// The connections, by slot (each request's token); a slot is reused only once its
/// connection has closed, after its last completion.
struct Conns<'a> {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    stopping: bool,
    sig: i32,
    ctx: &'a Ctx,
}

impl Conns<'_> {
    fn open(&mut self, sock: OwnedFd) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[slot] = Some(Conn {
            stream: aio::Stream::new(sock, MODEL_BUF_BYTES),
            op: Op::Read,
        });
        self.live += 1;
        self.submit(slot, Op::Read);
    }

    fn submit(&mut self, slot: usize, op: Op) {
        let Some(conn) = self.slots[slot].as_mut() else {
            return;
        };
        self.ctx.stats.call();
        let submitted = match op {
            Op::Read => conn.stream.read(slot, self.sig),
            Op::Write { from, to } => conn.stream.write(from..to, slot, self.sig),
        };
        conn.op = op;
        if let Err(e) = submitted {
            self.close(slot, Some(e));
        }
    }

    /// Slot `slot`'s request has completed (a token that names no request in flight, or
    /// one still running, is not believed).
    fn complete(&mut self, slot: usize) {
        let Some(conn) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if !conn.stream.in_flight() {
            return;
        }
        self.ctx.stats.call();
        let Some(result) = conn.stream.finish() else {
            return;
        };
        self.ctx.stats.call();
        let stats = &self.ctx.stats;
        match (conn.op, &result) {
            (Op::Read, Ok(n @ 1..)) => {
                stats.add(Field::Recvs, 1);
                stats.add(Field::BytesIn, *n as u64);
            }
            (Op::Write { from, to }, Ok(n)) => {
                stats.add(Field::Sends, 1);
                stats.add(Field::BytesOut, *n as u64);
                if from + n < to {
                    stats.add(Field::ShortSends, 1);
                }
            }
            _ => {}
        }
        match next(conn.op, result, self.stopping) {
            Next::Submit(op) => self.submit(slot, op),
            Next::Close(err) => self.close(slot, err),
        }
    }

    /// Only with no request in flight (after its completion, or a submission that failed).
    fn close(&mut self, slot: usize, err: Option<io::Error>) {
        self.ctx.stats.call();
        self.slots[slot] = None;
        self.free.push(slot);
        self.live -= 1;
        self.ctx.closed(err.as_ref());
    }

    /// Cancels every read; a read a helper is running is ended by shutting the read side.
    fn stop(&mut self) {
        self.stopping = true;
        for conn in self.slots.iter_mut().flatten() {
            if conn.op != Op::Read {
                continue;
            }
            self.ctx.stats.call();
            if !matches!(
                conn.stream.cancel(),
                Ok(aio::Cancel::Canceled | aio::Cancel::AllDone)
            ) {
                self.ctx.stats.call();
                let _ = sys::shutdown_read(conn.stream.fd());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: i32) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn a_read_is_written_back_then_read_again() {
        assert!(matches!(
            next(Op::Read, Ok(10), false),
            Next::Submit(Op::Write { from: 0, to: 10 })
        ));
        assert!(matches!(
            next(Op::Write { from: 0, to: 10 }, Ok(10), false),
            Next::Submit(Op::Read)
        ));
    }

    #[test]
    fn a_short_write_then_a_second_short_write_send_the_rest() {
        let first = next(Op::Write { from: 0, to: 100 }, Ok(30), false);
        assert!(matches!(
            first,
            Next::Submit(Op::Write { from: 30, to: 100 })
        ));
        let second = next(Op::Write { from: 30, to: 100 }, Ok(50), false);
        assert!(matches!(
            second,
            Next::Submit(Op::Write { from: 80, to: 100 })
        ));
        let last = next(Op::Write { from: 80, to: 100 }, Ok(20), false);
        assert!(matches!(last, Next::Submit(Op::Read)));
    }

    #[test]
    fn eof_closes_cleanly_and_errors_close_as_failed() {
        assert!(matches!(next(Op::Read, Ok(0), false), Next::Close(None)));
        let reset = next(Op::Read, err(libc::ECONNRESET), false);
        assert!(
            matches!(reset, Next::Close(Some(e)) if e.raw_os_error() == Some(libc::ECONNRESET))
        );
        let pipe = next(Op::Write { from: 0, to: 5 }, err(libc::EPIPE), false);
        assert!(matches!(pipe, Next::Close(Some(_))));
        let zero = next(Op::Write { from: 0, to: 5 }, Ok(0), false);
        assert!(matches!(zero, Next::Close(Some(e)) if e.kind() == io::ErrorKind::WriteZero));
    }

    #[test]
    fn stopping_finishes_what_is_owed_then_closes() {
        // A read that brought data (a blocked read shut by the stop may) is still answered.
        assert!(matches!(
            next(Op::Read, Ok(7), true),
            Next::Submit(Op::Write { from: 0, to: 7 })
        ));
        assert!(matches!(
            next(Op::Write { from: 0, to: 7 }, Ok(3), true),
            Next::Submit(Op::Write { from: 3, to: 7 })
        ));
        assert!(matches!(
            next(Op::Write { from: 3, to: 7 }, Ok(4), true),
            Next::Close(None)
        ));
        assert!(matches!(
            next(Op::Read, err(libc::ECANCELED), true),
            Next::Close(None)
        ));
        assert!(matches!(next(Op::Read, Ok(0), true), Next::Close(None)));
    }
}
