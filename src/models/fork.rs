//! `fork`: the notes' classic forking server, a process per connection. The parent waits in
//! poll(2) for a listener with a client, accepts it and forks; the child closes every fd it
//! inherited but its connection (the listeners among them), serves echo to the end with
//! blocking reads and writes and exits; the parent closes its copy and goes back to wait. A
//! connection costs a process: the fork, page tables, copied pages, a scheduler entity.
//!
//! Reaping: SIGCHLD's handler writes to a pipe in the parent's poll set, and on each wake
//! the parent waits (WNOHANG) for every child that has exited, so none stays a zombie. The
//! `Children` gauge counts those forked and not yet reaped.
//!
//! The stop: the parent stops accepting and sends each live child SIGTERM, whose handler
//! in the child shuts its connection's read side: its read returns 0 once what has arrived
//! is read, and since echo writes back each read before the next, it exits owing nothing.
//! The parent reaps them all, then returns. A child still writing to a peer that does not
//! read is cut when model-server stops waiting (`--shutdown-timeout`): each child dies with
//! the parent's thread (PR_SET_PDEATHSIG), so none outlives the server.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::Ctx;
use super::echo::{self, End};
use super::stats::Field;
use crate::plan::MODEL_BUF_BYTES;
use crate::sys::{self, process, process::ChildExits};

pub fn run(ctx: Ctx) -> io::Result<()> {
    // pipe2 and sigaction.
    ctx.stats.add(Field::Syscalls, 2);
    let exits = ChildExits::watch()?;
    let mut live = HashSet::new();
    let served = accept_loop(&ctx, &exits, &mut live);
    let stopped = stop_children(&ctx, &exits, &mut live);
    served.and(stopped)
}

fn accept_loop(ctx: &Ctx, exits: &ChildExits, live: &mut HashSet<u32>) -> io::Result<()> {
    // Allocated before any fork: each child echoes through its copy and allocates nothing.
    let mut buf = vec![0; MODEL_BUF_BYTES];
    ctx.stats.call();
    let parent = std::process::id();
    // `live` is reaped into between accepts, and forked into at each.
    let live = std::cell::RefCell::new(live);
    super::accept_blocking(
        ctx,
        &[exits.fd()],
        |_| reap(ctx, exits, &mut live.borrow_mut()),
        |conn| {
            ctx.stats.call();
            match process::fork(|| serve_child(ctx, conn.as_raw_fd(), &mut buf, parent)) {
                Ok(pid) => {
                    live.borrow_mut().insert(pid);
                    ctx.stats.add(Field::Children, 1);
                }
                // EAGAIN (RLIMIT_NPROC, pid_max) or ENOMEM: this connection is refused.
                Err(_) => {
                    ctx.stats.add(Field::Refused, 1);
                    ctx.closed(None);
                }
            }
            ctx.stats.call();
            drop(conn);
            Ok(())
        },
    )
}

/// The child's life, after the fork: its exit status. It makes only system calls and
/// touches only memory it inherited (see `process::fork`).
fn serve_child(ctx: &Ctx, conn: RawFd, buf: &mut [u8], parent: u32) -> i32 {
    // Two close_range, prctl and getppid, two sigaction and a sigprocmask; and the _exit.
    ctx.stats.add(Field::Syscalls, 8);
    let ready = process::close_fds_but(conn)
        .and_then(|()| process::die_with_parent(parent))
        .and_then(|()| process::shut_reads_on_stop(conn));
    let end = match ready {
        Ok(()) => echo::serve(conn, buf, &ctx.stats, process::stop_came),
        Err(e) => End::Failed(e),
    };
    // The exit closes the connection: the peer's EOF comes after this count.
    match end {
        End::Closed => {
            ctx.closed(None);
            0
        }
        End::Failed(e) => {
            ctx.closed(Some(&e));
            1
        }
    }
}

/// Waits for every child that has exited.
fn reap(ctx: &Ctx, exits: &ChildExits, live: &mut HashSet<u32>) -> io::Result<()> {
    ctx.stats.add(Field::Syscalls, exits.drain());
    loop {
        ctx.stats.call();
        let Some(pid) = process::reap()? else {
            return Ok(());
        };
        if live.remove(&pid) {
            ctx.stats.sub(Field::Children, 1);
        }
    }
}

/// Tells every live child to stop, and reaps them all.
fn stop_children(ctx: &Ctx, exits: &ChildExits, live: &mut HashSet<u32>) -> io::Result<()> {
    for &pid in live.iter() {
        // Not yet reaped, so the pid is still this child's (alive, or a zombie).
        ctx.stats.call();
        let _ = sys::kill(pid, libc::SIGTERM);
    }
    let mut wait = [libc::pollfd {
        fd: exits.fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    reap(ctx, exits, live)?;
    while !live.is_empty() {
        ctx.stats.call();
        sys::poll(&mut wait, -1)?;
        reap(ctx, exits, live)?;
    }
    Ok(())
}
