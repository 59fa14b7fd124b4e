//! The Reactor's access log (`server::access`), as nginx writes its own: a shard's lines
//! gather in a buffer that is written with write(2) once it holds `--access-log-buffer`
//! bytes, and at least once a second (`access::FLUSH_EVERY`). A regular file is always
//! "ready" to epoll, so that write(2) waits for the disk, and the shard's whole loop waits
//! with it.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::server::access::Pending;
use crate::stats::Counters;
use crate::sys;

#[derive(Debug)]
pub struct ShardLog {
    pub pending: Pending,
    spare: Vec<u8>,
}

impl ShardLog {
    pub fn new(pending: Pending) -> ShardLog {
        ShardLog {
            pending,
            spare: Vec::new(),
        }
    }

    /// How long the loop may wait before the buffer is due to be written.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.pending.due_in(now)
    }

    /// Writes the buffer if it is full (nginx's `buffer=`), or its oldest line is a second
    /// old (`flush=`), or (`force`) the shard is ending. Called once per loop turn.
    pub fn maybe_flush(&mut self, now: Instant, force: bool, counters: &mut Counters) {
        let cap = self.pending.cap();
        if (force && !self.pending.is_empty()) || self.pending.due(cap, now) {
            self.flush(counters);
        }
        if self.pending.sync_due(now, force)
            && let Some(file) = self.pending.file()
        {
            counters.syscalls += 1;
            let result = sys::fdatasync(file.as_raw_fd());
            self.pending.synced(result, now, counters);
        }
    }

    /// Lines were added: past the buffer's bound it is written at once, as nginx does.
    pub fn added(&mut self, counters: &mut Counters) {
        if self.pending.full() {
            self.flush(counters);
        }
    }

    /// write(2) of the whole buffer, short writes continued, EINTR retried.
    fn flush(&mut self, counters: &mut Counters) {
        let Some(file) = self.pending.file() else {
            return;
        };
        let data = self.pending.take(std::mem::take(&mut self.spare));
        let mut at = 0;
        loop {
            counters.syscalls += 1;
            match sys::write(file.as_raw_fd(), &data[at..]) {
                Ok(n) if at + n == data.len() => {
                    self.pending.written(Ok(n), counters);
                    break;
                }
                Ok(0) => {
                    let zero = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    self.pending.written(Err(zero), counters);
                    break;
                }
                Ok(n) => {
                    self.pending.wrote_part(n, counters);
                    at += n;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    self.pending.written(Err(e), counters);
                    break;
                }
            }
        }
        self.spare = data;
    }
}
