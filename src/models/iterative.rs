//! `iterative`: the notes' starting point. Wait for a client, serve it to its end with
//! blocking reads and writes, then the next: one connection at a time, the others waiting
//! in the listen backlog. With several ports, poll(2) says which listener has a client (the
//! notes' server has one port, and blocks in accept).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use super::Ctx;
use super::echo::{self, End};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

pub fn run(ctx: Ctx) -> io::Result<()> {
    // The stop wakes the poll through its eventfd, and shuts the read side of the
    // connection being served: its blocked read returns 0.
    let serving = Arc::new(Mutex::new(None));
    let current = serving.clone();
    ctx.stop.on_stop(Box::new(move || {
        if let Some(fd) = *current.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = sys::shutdown_read(fd);
        }
    }));
    let mut buf = vec![0; MODEL_BUF_BYTES];
    super::accept_blocking(
        &ctx,
        &[],
        |_| Ok(()),
        |conn| {
            *serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.as_raw_fd());
            if ctx.stop.is_set() {
                let _ = sys::shutdown_read(conn.as_raw_fd());
            }
            let end = echo::serve(conn.as_raw_fd(), &mut buf, &ctx.stats, || ctx.stop.is_set());
            *serving.lock().unwrap_or_else(|p| p.into_inner()) = None;
            ctx.stats.call();
            drop(conn);
            match end {
                End::Closed => ctx.closed(None),
                End::Failed(e) => ctx.closed(Some(&e)),
            }
            Ok(())
        },
    )
}
