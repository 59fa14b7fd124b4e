//! One end of a link between a Redis worker and the keyspace owner (`owner`): a
//! non-blocking unix stream socket, the frames read from it (`frame::Inbox`), and the
//! frames a loop turn gathered for it, written once at the end of the turn (one write per
//! turn per link, not one per request). The socket is in the loop's epoll set,
//! edge-triggered, for EPOLLIN and EPOLLOUT: reads go on until EAGAIN; EPOLLOUT fires once
//! the socket has room after a write met EAGAIN.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use super::frame::Inbox;
use crate::stats::Counters;
use crate::sys;

/// Output gathered for a link above this stops what feeds it (the owner reads no more from
/// that link, a worker reads no more from its clients) until it is written: memory stays
/// bounded whichever side is slow, however many connections share the link (each has at
/// most one read in flight, `Frame::Ran`). 1 MiB is sixteen full 64 KiB reads.
pub const OUT_BOUND: usize = 1024 * 1024;

/// One read from a link takes up to this (as one read from a client).
const READ_BUF: usize = 64 * 1024;

/// The abstract unix socket name of the keyspace owner of the master with `pid`: nothing in
/// the file system to clean up, and another server's master has another name.
pub fn socket_name(pid: u32) -> String {
    format!("c1m-keyspace-{pid}")
}

/// The owner's listener on `name` (abstract namespace), non-blocking.
pub fn listen(name: &str) -> io::Result<OwnedFd> {
    let l = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name)?)?;
    l.set_nonblocking(true)?;
    Ok(l.into())
}

/// A worker's link to the owner listening on `name`, non-blocking once connected.
pub fn connect(name: &str) -> io::Result<OwnedFd> {
    let s = UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

#[derive(Debug)]
pub struct Wire {
    pub fd: OwnedFd,
    pub inbox: Inbox,
    /// What one read takes.
    buf: Box<[u8]>,
    /// Frames for the other end, written at the end of the turn.
    pub out: Vec<u8>,
    /// The last write met EAGAIN: EPOLLOUT will say when to write again.
    blocked: bool,
}

impl Wire {
    pub fn new(fd: OwnedFd) -> Wire {
        Wire {
            fd,
            inbox: Inbox::default(),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            out: Vec::new(),
            blocked: false,
        }
    }

    /// Its output is above `OUT_BOUND`.
    pub fn congested(&self) -> bool {
        self.out.len() > OUT_BOUND
    }

    /// EPOLLOUT came: the socket has room again.
    pub fn writable(&mut self) {
        self.blocked = false;
    }

    /// One read from the link into the inbox: Some(bytes read), 0 at its EOF; None at
    /// EAGAIN (EINTR is retried).
    pub fn read_once(&mut self, counters: &mut Counters) -> io::Result<Option<usize>> {
        loop {
            counters.syscalls += 1;
            match sys::read(self.fd.as_raw_fd(), &mut self.buf) {
                Ok(n) => {
                    self.inbox.extend(&self.buf[..n]);
                    return Ok(Some(n));
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what is gathered, until it is all taken or the socket is full.
    pub fn flush(&mut self, counters: &mut Counters) -> io::Result<()> {
        let mut at = 0;
        while at < self.out.len() && !self.blocked {
            counters.syscalls += 1;
            match sys::write(self.fd.as_raw_fd(), &self.out[at..]) {
                Ok(n) => at += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.blocked = true,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        self.out.drain(..at);
        if self.out.is_empty() && self.out.capacity() > OUT_BOUND {
            self.out = Vec::new();
        }
        Ok(())
    }
}
