//! The Proactor's access log (`server::access`): a shard's lines reach the file through its
//! ring, one IORING_OP_WRITE in flight, the next batch gathering behind it, so the shard's
//! thread never waits for the disk. Past `--access-log-buffer` the shard stops reading: the
//! recv completions that come are held, with their provided buffers, until a write has
//! made room (the buffer ring then runs dry and the multishot recvs wait for buffers, which
//! is the backpressure the peers see). Nothing is dropped and the thread never blocks.
//!
//! A connection's peer address is asked of the socket itself: the direct descriptor is
//! installed as a plain fd for one getpeername(2) (IORING_OP_FIXED_FD_INSTALL, 6.8), since
//! a multishot accept reuses one address buffer for every connection it takes.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::proto::Done;
use crate::server::access::{ConnLog, Pending};
use crate::stats::Counters;
use crate::sys;

/// One shard's log: its pending lines, its connections' figures, the write in flight.
#[derive(Debug)]
pub struct ShardLog<C> {
    pub pending: Pending,
    /// By connection slot: the generation the figures belong to, and the figures.
    conns: Vec<Option<(u32, ConnLog)>>,
    /// The file of the write in flight (its rest goes to the same file, whatever a reopen
    /// did meanwhile); None when no write is in flight.
    writing: Option<Arc<OwnedFd>>,
    /// The buffer the next batch is gathered in, once the one in flight comes back.
    spare: Vec<u8>,
    /// Recv completions held while the buffer is full, oldest first.
    parked: VecDeque<C>,
    /// When the shard began holding recv completions.
    stalled: Option<Instant>,
}

/// What the shard asks of its ring for the log.
pub enum Write {
    /// Nothing to write, or a write is in flight already.
    None,
    /// Write `data[start..]` to `file`.
    Batch {
        file: Arc<OwnedFd>,
        data: Vec<u8>,
        start: usize,
    },
    /// fdatasync `file` (`--access-log-fsync`).
    Sync { file: Arc<OwnedFd> },
}

impl<C> ShardLog<C> {
    pub fn new(pending: Pending) -> Self {
        ShardLog {
            pending,
            conns: Vec::new(),
            writing: None,
            spare: Vec::new(),
            parked: VecDeque::new(),
            stalled: None,
        }
    }

    fn conn(&mut self, slot: u32, generation: u32) -> Option<&mut ConnLog> {
        match self.conns.get_mut(slot as usize) {
            Some(Some((g, c))) if *g == generation => Some(c),
            _ => None,
        }
    }

    /// Connection (`slot`, `generation`) was accepted now.
    pub fn opened(&mut self, slot: u32, generation: u32, now: Instant) {
        let i = slot as usize;
        if self.conns.len() <= i {
            self.conns.resize(i + 1, None);
        }
        self.conns[i] = Some((generation, ConnLog::new(None, now)));
    }

    /// The direct descriptor of (`slot`, `generation`) installed as `fd`: its peer's address.
    pub fn installed(&mut self, slot: u32, generation: u32, fd: OwnedFd) {
        let peer = sys::peer_addr(fd.as_raw_fd()).ok();
        if let Some(c) = self.conn(slot, generation) {
            c.peer = peer;
        }
    }

    pub fn received(&mut self, slot: u32, generation: u32, n: u32) {
        if let Some(c) = self.conn(slot, generation) {
            c.bytes_in += u64::from(n);
        }
    }

    pub fn sent(&mut self, slot: u32, generation: u32, n: u32) {
        if let Some(c) = self.conn(slot, generation) {
            c.bytes_out += u64::from(n);
        }
    }

    /// Connection (`slot`, `generation`) closed now: an echo connection's line.
    pub fn closed(
        &mut self,
        slot: u32,
        generation: u32,
        echo: bool,
        now: Instant,
        counters: &mut Counters,
    ) {
        if let Some(Some((g, c))) = self.conns.get_mut(slot as usize).map(Option::take)
            && g == generation
            && echo
        {
            self.pending.echo(&c, now, counters);
        }
    }

    /// Connection (`slot`, `generation`) answered `done` (HTTP, Redis): a line each.
    pub fn answered(
        &mut self,
        slot: u32,
        generation: u32,
        done: Done<'_>,
        counters: &mut Counters,
    ) {
        let peer = self.conn(slot, generation).and_then(|c| c.peer);
        self.pending.answered(peer, done, counters);
    }

    /// Whether a recv completion must be held (the buffer is full, or others are held and
    /// must go first).
    pub fn holds(&self) -> bool {
        self.pending.full() || !self.parked.is_empty()
    }

    /// Holds recv completion `c` until the buffer has room.
    pub fn park(&mut self, c: C, now: Instant) {
        self.stalled.get_or_insert(now);
        self.parked.push_back(c);
    }

    /// The next held recv completion, once the buffer has room; the stall ends with the
    /// last.
    pub fn unpark(&mut self, now: Instant, counters: &mut Counters) -> Option<C> {
        if self.pending.full() {
            return None;
        }
        let c = self.parked.pop_front();
        if self.parked.is_empty()
            && let Some(since) = self.stalled.take()
        {
            counters.log_stall_us += now.saturating_duration_since(since).as_micros() as u64;
        }
        c
    }

    /// The next batch to hand the ring, if none is in flight and one is due: half the
    /// buffer's bound gathered (the other half gathers while it is written), or its oldest
    /// line a second old, or (`force`) the shard is stopping.
    /// With nothing due to be written, an fdatasync if one is due (`--access-log-fsync`).
    pub fn next_write(&mut self, now: Instant, force: bool) -> Write {
        if self.writing.is_some() {
            return Write::None;
        }
        let due = self.pending.due(self.pending.cap() / 2, now);
        if self.pending.is_empty() || !(due || force) {
            if self.pending.sync_due(now, force && self.pending.is_empty()) {
                // The file that was written to: the one in use, unless a reopen came since,
                // in which case the old file's last lines are left to the page cache.
                if let Some(file) = self.pending.file() {
                    self.writing = Some(file.clone());
                    return Write::Sync { file };
                }
            }
            return Write::None;
        }
        let Some(file) = self.pending.file() else {
            return Write::None;
        };
        let data = self.pending.take(std::mem::take(&mut self.spare));
        self.writing = Some(file.clone());
        Write::Batch {
            file,
            data,
            start: 0,
        }
    }

    /// The write in flight completed with `res` for `data[start..]`: the rest of a short
    /// write goes next (to the same file); a whole one, or a failure, ends the batch.
    pub fn wrote(
        &mut self,
        res: i32,
        data: Vec<u8>,
        start: usize,
        counters: &mut Counters,
    ) -> Write {
        let len = data.len() - start;
        match usize::try_from(res) {
            Ok(n) if n > 0 && n < len => {
                self.pending.wrote_part(n, counters);
                let file = self.writing.clone().expect("a write was in flight");
                return Write::Batch {
                    file,
                    data,
                    start: start + n,
                };
            }
            Ok(n) if n == len => self.pending.written(Ok(n), counters),
            Ok(_) => self
                .pending
                .written(Err(io::Error::from(io::ErrorKind::WriteZero)), counters),
            Err(_) => self
                .pending
                .written(Err(io::Error::from_raw_os_error(-res)), counters),
        }
        self.writing = None;
        self.spare = data;
        Write::None
    }

    /// The fdatasync in flight completed with `res`.
    pub fn sync_done(&mut self, res: i32, now: Instant, counters: &mut Counters) {
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(())
        };
        self.pending.synced(result, now, counters);
        self.writing = None;
    }

    /// Nothing held, nothing pending (nor a last fdatasync), no file operation in flight:
    /// the shard may end.
    pub fn idle(&self) -> bool {
        self.writing.is_none()
            && self.pending.is_empty()
            && self.parked.is_empty()
            && !self.pending.sync_due(Instant::now(), true)
    }
}
