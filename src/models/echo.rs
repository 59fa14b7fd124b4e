//! Echo as the models serve it: a blocking connection served to its end (`serve`), and a
//! non-blocking one driven by readiness (`Echo`). Every system call is counted; short
//! writes are finished, EINTR retried, EAGAIN waited out, a half-close (read 0) closes once
//! everything received has been written back, and a reset ends the connection as an error.

use std::io;
use std::os::fd::RawFd;

use super::stats::{Field, Stats};
use crate::sys;

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed (or half-closed) and everything it sent was written back; or the
    /// model stopped.
    Closed,
    /// Reset, broken pipe, or another error.
    Failed(io::Error),
}

/// read(2), counted.
pub fn read(fd: RawFd, buf: &mut [u8], stats: &Stats) -> io::Result<usize> {
    stats.call();
    let r = sys::read(fd, buf);
    if let Ok(n @ 1..) = r {
        stats.add(Field::Recvs, 1);
        stats.add(Field::BytesIn, n as u64);
    }
    r
}

/// write(2), counted (a write that took nothing is no send).
pub fn write(fd: RawFd, buf: &[u8], stats: &Stats) -> io::Result<usize> {
    stats.call();
    let r = sys::write(fd, buf);
    if let Ok(n) = r {
        stats.add(Field::Sends, 1);
        stats.add(Field::BytesOut, n as u64);
        if n < buf.len() {
            stats.add(Field::ShortSends, 1);
        }
    }
    r
}

/// Writes all of `bytes` to a blocking socket: short writes finished, EINTR retried.
pub fn write_all(fd: RawFd, mut bytes: &[u8], stats: &Stats) -> io::Result<()> {
    while !bytes.is_empty() {
        match write(fd, bytes, stats) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves echo on blocking socket `fd` until the peer closes it, or until `stopping` says
/// the model stops (which also shuts the read side, so that a blocked read returns): each
/// read's bytes are written back whole before the next read, so nothing received is ever
/// owed at a read, and a stop ends the connection there. (After SHUT_RD Linux still takes
/// what the peer sends, so a peer that keeps sending would keep a reader going.)
pub fn serve(fd: RawFd, buf: &mut [u8], stats: &Stats, stopping: impl Fn() -> bool) -> End {
    loop {
        if stopping() {
            return End::Closed;
        }
        match read(fd, buf, stats) {
            Ok(0) => return End::Closed,
            Ok(n) => {
                if let Err(e) = write_all(fd, &buf[..n], stats) {
                    return End::Failed(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return End::Failed(e),
        }
    }
}

/// What a non-blocking connection waits for next.
#[derive(Debug)]
pub enum Step {
    /// Readable: nothing is owed.
    Read,
    /// Writable: output is owed, and nothing more is read until it has gone (so what a
    /// connection holds is bounded by one read).
    Write,
    /// Close it (the error, if it ended in one).
    Close(Option<io::Error>),
}

/// A non-blocking echo connection's state: the output still owed, and whether the peer
/// has half-closed.
#[derive(Debug, Default)]
pub struct Echo {
    owed: Vec<u8>,
    eof: bool,
}

impl Echo {
    /// `fd` is readable: reads once (`drain`: until EAGAIN, as edge-triggered readiness
    /// needs) into `scratch`, writing each read's bytes straight back; what the socket does
    /// not take is kept as owed.
    pub fn on_readable(
        &mut self,
        fd: RawFd,
        scratch: &mut [u8],
        stats: &Stats,
        drain: bool,
    ) -> Step {
        debug_assert!(self.owed.is_empty(), "read while output is owed");
        loop {
            match read(fd, scratch, stats) {
                Ok(0) => {
                    self.eof = true;
                    return Step::Close(None);
                }
                Ok(n) => match self.send(fd, &scratch[..n], stats) {
                    Ok(true) if drain => continue,
                    Ok(true) => return Step::Read,
                    Ok(false) => return Step::Write,
                    Err(e) => return Step::Close(Some(e)),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Read,
                Err(e) => return Step::Close(Some(e)),
            }
        }
    }

    /// `fd` is writable: writes what is owed.
    pub fn on_writable(&mut self, fd: RawFd, stats: &Stats) -> Step {
        let owed = std::mem::take(&mut self.owed);
        match self.send(fd, &owed, stats) {
            Ok(true) if self.eof => Step::Close(None),
            Ok(true) => Step::Read,
            Ok(false) => Step::Write,
            Err(e) => Step::Close(Some(e)),
        }
    }

    /// Whether output is owed.
    pub fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Writes `bytes` until EAGAIN, keeping the rest as owed: whether all of it went.
    fn send(&mut self, fd: RawFd, mut bytes: &[u8], stats: &Stats) -> io::Result<bool> {
        while !bytes.is_empty() {
            match write(fd, bytes, stats) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.owed.extend_from_slice(bytes);
        Ok(bytes.is_empty())
    }
}
