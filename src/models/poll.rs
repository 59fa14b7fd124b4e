//! `poll`: select without its wall. One thread keeps a `pollfd` array in step with its
//! connections (entry `WATCHED + i` is connection `i`; a close swap-removes both), each
//! entry asking for POLLIN while the connection owes nothing and POLLOUT while it owes
//! output, and walks the array after each poll(2) for the entries whose `revents` are set.
//! Level-triggered, one step per ready fd per round (the rule and the stop are in `table`).
//!
//! Its costs: each call copies the whole array into the kernel and back, the kernel polls
//! every fd in it and the model walks it again: O(n) per call in the connections held,
//! however few are ready. No FD_SETSIZE: it holds as many as RLIMIT_NOFILE allows.

use std::io;
use std::os::fd::AsRawFd;

use super::Ctx;
use super::echo::Step;
use super::table::{self, Conn};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

pub fn run(ctx: Ctx) -> io::Result<()> {
    // The stop eventfd, then the listeners, then the connections.
    let watched = 1 + ctx.listeners.len();
    let mut fds: Vec<libc::pollfd> = std::iter::once(ctx.stop.fd())
        .chain(ctx.listeners.iter().map(|l| l.as_raw_fd()))
        .map(|fd| pollfd(fd, libc::POLLIN))
        .collect();
    let mut conns: Vec<Conn> = Vec::new();
    let mut scratch = vec![0; MODEL_BUF_BYTES];
    let mut stopping = false;
    loop {
        if stopping && conns.is_empty() {
            return Ok(());
        }
        ctx.stats.call();
        if sys::poll(&mut fds, -1)? == 0 {
            continue;
        }
        if fds[0].revents != 0 {
            stopping = true;
            // poll(2) skips an entry with a negative fd: the stop and the listeners are
            // no longer watched.
            for w in &mut fds[..watched] {
                w.fd = -1;
            }
            close_idle(&ctx, &mut fds, &mut conns, watched);
            continue;
        }
        let mut i = 0;
        while i < conns.len() {
            if fds[watched + i].revents == 0 {
                i += 1;
                continue;
            }
            match conns[i].on_ready(&mut scratch, &ctx.stats, stopping) {
                Step::Close(err) => {
                    // The last entry moves to `i`, with its revents: it is served next.
                    fds.swap_remove(watched + i);
                    table::close(&ctx, conns.swap_remove(i), err);
                }
                _ => {
                    fds[watched + i].events = interest(&conns[i]);
                    i += 1;
                }
            }
        }
        for l in 1..watched {
            if fds[l].revents == 0 {
                continue;
            }
            for fd in table::accepts(&ctx, fds[l].fd) {
                if let Some(conn) = table::admit(&ctx, fd?) {
                    fds.push(pollfd(conn.fd(), interest(&conn)));
                    conns.push(conn);
                }
            }
        }
    }
}

/// What a connection waits for: to be readable while it owes nothing, writable while it
/// owes output.
fn interest(conn: &Conn) -> i16 {
    if conn.owes() {
        libc::POLLOUT
    } else {
        libc::POLLIN
    }
}

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// The stop: closes every connection that owes nothing.
fn close_idle(ctx: &Ctx, fds: &mut Vec<libc::pollfd>, conns: &mut Vec<Conn>, watched: usize) {
    let mut i = 0;
    while i < conns.len() {
        if conns[i].owes() {
            i += 1;
        } else {
            fds.swap_remove(watched + i);
            table::close(ctx, conns.swap_remove(i), None);
        }
    }
}
