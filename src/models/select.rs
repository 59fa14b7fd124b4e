//! `select`: the notes' first multiplexing server. One thread keeps a table of its
//! connections indexed by fd; each round it rebuilds a read set (the stop eventfd, the
//! listeners, every connection that owes nothing) and a write set (every connection that
//! owes output) from that table, calls select(2) with the highest fd plus one, and walks
//! the fds up to it asking FD_ISSET. Level-triggered, one step per ready fd per round (the
//! rule and the stop are in `table`).
//!
//! Its costs: each call copies both sets into the kernel and back and the kernel polls
//! every fd below maxfd + 1, and the model walks them all again: O(maxfd) per round, however
//! few are ready. And an fd_set holds only fds below FD_SETSIZE (1024): a connection whose
//! fd is at or above it cannot be watched, so it is closed as soon as it is accepted and
//! counted as refused (`plan_model` plans the model within that wall).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::Ctx;
use super::echo::Step;
use super::stats::Field;
use super::table::{self, Conn};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys::select::{self, FdSet};

pub fn run(ctx: Ctx) -> io::Result<()> {
    let stop = ctx.stop.fd();
    let listeners: Vec<RawFd> = ctx.listeners.iter().map(|l| l.as_raw_fd()).collect();
    // Every fd the sets hold fits, so the table is at most FD_SETSIZE long; it ends at the
    // highest connection's fd.
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let (mut read, mut write) = (FdSet::new(), FdSet::new());
    let mut scratch = vec![0; MODEL_BUF_BYTES];
    let mut stopping = false;
    loop {
        if stopping && conns.is_empty() {
            return Ok(());
        }
        read.clear();
        write.clear();
        let mut nfds = 0;
        if !stopping {
            for &fd in std::iter::once(&stop).chain(&listeners) {
                read.insert(fd);
                nfds = nfds.max(fd as usize + 1);
            }
        }
        for conn in conns.iter().flatten() {
            if conn.owes() {
                write.insert(conn.fd());
            } else {
                read.insert(conn.fd());
            }
        }
        nfds = nfds.max(conns.len());
        ctx.stats.call();
        if select::select(nfds, &mut read, &mut write)? == 0 {
            continue;
        }
        if read.contains(stop) {
            stopping = true;
            close_idle(&ctx, &mut conns);
            continue;
        }
        for (fd, slot) in conns.iter_mut().enumerate() {
            if !read.contains(fd as RawFd) && !write.contains(fd as RawFd) {
                continue;
            }
            let Some(conn) = slot else {
                continue;
            };
            if let Step::Close(err) = conn.on_ready(&mut scratch, &ctx.stats, stopping) {
                table::close(&ctx, slot.take().expect("served just now"), err);
            }
        }
        trim(&mut conns);
        for &listener in listeners.iter().filter(|&&l| read.contains(l)) {
            for fd in table::accepts(&ctx, listener) {
                let fd = fd?;
                let n = fd.as_raw_fd();
                if !select::fits(n) {
                    // It could never be put in a set: refused, not admitted.
                    ctx.stats.add(Field::Refused, 1);
                    table::close_fd(&ctx, fd);
                    continue;
                }
                if let Some(conn) = table::admit(&ctx, fd) {
                    let n = n as usize;
                    if conns.len() <= n {
                        conns.resize_with(n + 1, || None);
                    }
                    conns[n] = Some(conn);
                }
            }
        }
    }
}

/// The stop: closes every connection that owes nothing.
fn close_idle(ctx: &Ctx, conns: &mut Vec<Option<Conn>>) {
    for slot in conns.iter_mut() {
        if slot.as_ref().is_some_and(|c| !c.owes()) {
            table::close(ctx, slot.take().expect("checked"), None);
        }
    }
    trim(conns);
}

/// Drops the table's empty slots past its highest connection: the next round's maxfd.
fn trim(conns: &mut Vec<Option<Conn>>) {
    while conns.last().is_some_and(Option::is_none) {
        conns.pop();
    }
}
