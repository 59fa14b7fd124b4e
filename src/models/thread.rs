//! `thread`: the notes' thread per connection. One thread waits in poll(2) for a listener
//! with a client (as `iterative` does) and accepts it; each connection gets a thread of its
//! own, which serves echo to the end with blocking reads and writes, then closes and ends.
//! A thread has a stack of `--stack-kib` (`ctx.stack_bytes`, 64 KiB unless told) and a
//! 16 KiB buffer on the heap (`MODEL_BUF_BYTES`): a connection costs those 80 KiB, a
//! thread for the kernel to schedule, and a context switch per wake-up.
//!
//! The stop: the accept loop ends, and a stop hook shuts the read side of every live
//! connection, found in a registry of their fds: a blocked read returns 0 once what has
//! arrived is read, and since echo writes back each read before the next, the thread closes
//! owing nothing. A thread takes its fd out of the registry before it closes it, so the hook
//! never shuts a reused fd number. The model then waits for the last thread to end; one
//! still writing to a peer that does not read is cut when model-server stops waiting
//! (`--shutdown-timeout`).

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::Ctx;
use super::echo::{self, End};
use super::stats::{Field, Stats};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

pub fn run(ctx: Ctx) -> io::Result<()> {
    let ctx = Arc::new(ctx);
    let live = Arc::new(Live::default());
    let (hook, stats) = (live.clone(), ctx.stats.clone());
    ctx.stop.on_stop(Box::new(move || hook.shut_reads(&stats)));
    let served = accept_loop(&ctx, &live);
    if served.is_err() {
        // The model fails: its connections end as at a stop.
        live.shut_reads(&ctx.stats);
    }
    let mut now = live.lock();
    while now.threads > 0 {
        now = live.ended.wait(now).unwrap_or_else(|p| p.into_inner());
    }
    served
}

fn accept_loop(ctx: &Arc<Ctx>, live: &Arc<Live>) -> io::Result<()> {
    super::accept_blocking(
        ctx,
        &[],
        |_| Ok(()),
        |conn| {
            // Counted before it starts, so the wait at the stop cannot miss it.
            live.lock().threads += 1;
            let (ctx2, live2) = (ctx.clone(), live.clone());
            // clone(2); the stack's mmap and the rest are libc's and std's, not counted.
            ctx.stats.call();
            let spawned = std::thread::Builder::new()
                .stack_size(ctx.stack_bytes)
                .spawn(move || serve(&ctx2, conn, &live2));
            if spawned.is_err() {
                // EAGAIN or ENOMEM: the closure, and the connection with it, is dropped
                // (closed) unregistered.
                live.end_thread();
                ctx.stats.add(Field::Refused, 1);
                ctx.closed(None);
            }
            Ok(())
        },
    )
}

/// A connection's thread.
fn serve(ctx: &Ctx, conn: OwnedFd, live: &Live) {
    let fd = conn.as_raw_fd();
    live.lock().fds.insert(fd);
    // A stop whose hook ran before the insert had set the flag already: seen here.
    if ctx.stop.is_set() {
        ctx.stats.call();
        let _ = sys::shutdown_read(fd);
    }
    let mut buf = vec![0; MODEL_BUF_BYTES];
    let end = echo::serve(fd, &mut buf, &ctx.stats, || ctx.stop.is_set());
    live.lock().fds.remove(&fd);
    ctx.stats.call();
    drop(conn);
    match end {
        End::Closed => ctx.closed(None),
        End::Failed(e) => ctx.closed(Some(&e)),
    }
    live.end_thread();
}

/// The live connections' fds, and the connection threads started and not yet ended.
#[derive(Default)]
struct Live {
    now: Mutex<Now>,
    ended: Condvar,
}

#[derive(Default)]
struct Now {
    fds: HashSet<RawFd>,
    threads: usize,
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Now> {
        self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shuts every live connection's read side: under the lock, so no fd is closed (and
    /// its number reused) meanwhile.
    fn shut_reads(&self, stats: &Stats) {
        for &fd in self.lock().fds.iter() {
            stats.call();
            let _ = sys::shutdown_read(fd);
        }
    }

    fn end_thread(&self) {
        let mut now = self.lock();
        now.threads -= 1;
        if now.threads == 0 {
            self.ended.notify_all();
        }
    }
}
