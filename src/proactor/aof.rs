//! A Proactor shard's part of the append-only file (`server::aof`): it hands the journal's
//! records to its ring when no batch is in flight anywhere (`Journal::take`), linked to an
//! fdatasync with `always`, and an fdatasync a second with `everysec`; and it keeps the
//! connections whose replies wait for the journal to be durable. Nothing here blocks: the
//! ring does the I/O, the shard applies what this returns.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::proto::redis::Keyspace;
use crate::server::aof::Aof;
use crate::stats::Counters;

/// What the shard submits next.
pub enum Op {
    /// Write `data[start..]`, linked to an fdatasync if `sync`.
    Write {
        file: Arc<OwnedFd>,
        data: Vec<u8>,
        start: usize,
        sync: bool,
    },
    /// fdatasync the file.
    Sync { file: Arc<OwnedFd> },
}

/// A batch in flight: the journal position it ends at, and, after a short write whose linked
/// sync is yet to complete (cancelled), the rest to write.
type Batch = (u64, Option<(Vec<u8>, usize)>);

pub struct ShardAof {
    shard: usize,
    aof: Arc<Aof>,
    keyspace: Arc<Keyspace>,
    /// The batch this shard has in flight.
    batch: Option<Batch>,
    /// `everysec`: an fdatasync of this shard is in flight.
    syncing: bool,
    /// Connections (slot, generation) holding replies until the journal is durable to lsn.
    pub held: Vec<(u32, u32, u64)>,
    /// The buffer of the last batch, kept for the next.
    spare: Vec<u8>,
}

impl ShardAof {
    pub fn new(shard: usize, aof: Arc<Aof>, keyspace: Arc<Keyspace>) -> ShardAof {
        ShardAof {
            shard,
            aof,
            keyspace,
            batch: None,
            syncing: false,
            held: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// The eventfd to read: signalled when another shard's sync made the journal durable.
    pub fn notify_fd(&self) -> Option<std::os::fd::RawFd> {
        self.aof.holds().then(|| self.aof.notify_fd(self.shard))
    }

    /// Replies are held for a sync in flight: its completion must be acted on at once, not
    /// after a batched wait (`--batch-usec` would add up to its whole delay to every sync;
    /// measured: 36,000-37,000 -> 50,000-58,000 SETs/s with redis-benchmark -c 50).
    pub fn urgent(&self) -> bool {
        self.batch.is_some() && !self.held.is_empty()
    }

    /// Nothing of this shard's is in flight, nor held.
    pub fn idle(&self) -> bool {
        self.batch.is_none() && !self.syncing && self.held.is_empty()
    }

    /// At the end of a loop turn: the next batch, if records wait and no batch is in flight
    /// (this shard's or another's); else the `everysec` fdatasync, if one is due.
    pub fn next_op(&mut self) -> Option<Op> {
        let journal = self.keyspace.journal()?;
        if self.batch.is_none()
            && let Some((data, end)) = journal.take(std::mem::take(&mut self.spare))
        {
            self.batch = Some((end, None));
            return Some(Op::Write {
                file: self.aof.file(),
                data,
                start: 0,
                sync: self.aof.holds(),
            });
        }
        if !self.syncing && self.aof.sync_due() {
            self.syncing = true;
            return Some(Op::Sync {
                file: self.aof.file(),
            });
        }
        None
    }

    /// The batch's write completed with `res`: the rest of a short one to write, if any.
    pub fn wrote(
        &mut self,
        res: i32,
        data: Vec<u8>,
        start: usize,
        counters: &mut Counters,
    ) -> Option<Op> {
        let always = self.aof.holds();
        let Some((end, _)) = self.batch else {
            debug_assert!(false, "a journal write without a batch");
            return None;
        };
        let rest = data.len() - start;
        match usize::try_from(res) {
            Ok(n) if n == rest => {
                counters.aof_writes += 1;
                counters.aof_bytes += n as u64;
                self.spare = data;
                if !always {
                    self.done();
                }
                None
            }
            Ok(n) if n > 0 => {
                counters.aof_writes += 1;
                counters.aof_bytes += n as u64;
                // With `always` the linked sync was cancelled: write the rest once its
                // completion is in.
                if always {
                    self.batch = Some((end, Some((data, start + n))));
                    return None;
                }
                Some(Op::Write {
                    file: self.aof.file(),
                    data,
                    start: start + n,
                    sync: false,
                })
            }
            _ => {
                let e = match res {
                    0 => io::Error::from(io::ErrorKind::WriteZero),
                    _ => io::Error::from_raw_os_error(-res),
                };
                self.aof.failed("writing", e, counters);
                if !always {
                    self.done();
                }
                None
            }
        }
    }

    /// An fdatasync completed with `res`: with `always`, the batch's (durable now, or a short
    /// write's cancelled one: the rest to write); with `everysec`, the second's.
    pub fn synced(&mut self, res: i32, counters: &mut Counters) -> Option<Op> {
        if !self.aof.holds() {
            self.syncing = false;
            match res {
                0 => counters.aof_syncs += 1,
                _ => self
                    .aof
                    .failed("fsyncing", io::Error::from_raw_os_error(-res), counters),
            }
            return None;
        }
        let Some((end, rest)) = self.batch.take() else {
            debug_assert!(false, "a journal sync without a batch");
            return None;
        };
        match (res, rest) {
            (_, Some((data, start))) => {
                self.batch = Some((end, None));
                return Some(Op::Write {
                    file: self.aof.file(),
                    data,
                    start,
                    sync: true,
                });
            }
            (0, None) => {
                counters.aof_syncs += 1;
                if let Some(j) = self.keyspace.journal() {
                    j.set_durable(end);
                }
                self.aof.durable_now(self.shard);
            }
            (e, None) => {
                // A failed write cancels its sync too: said once, in `wrote`.
                if e != -libc::ECANCELED {
                    self.aof
                        .failed("fsyncing", io::Error::from_raw_os_error(-e), counters);
                }
            }
        }
        self.done();
        None
    }

    /// The batch is over: the journal may hand out the next.
    fn done(&mut self) {
        self.batch = None;
        if let Some(j) = self.keyspace.journal() {
            j.written();
        }
    }

    /// The held connections whose replies may go now (the journal is durable to their lsn);
    /// the others stay, and this shard is woken when the journal moves on.
    pub fn release(&mut self, out: &mut Vec<(u32, u32, u64)>) {
        let Some(journal) = self.keyspace.journal() else {
            return;
        };
        if self.held.is_empty() {
            return;
        }
        // Say we wait before looking: a sync that completes in between then wakes us.
        self.aof.wait(self.shard);
        let durable = journal.durable();
        self.held.retain(|&(slot, generation, lsn)| {
            let ready = lsn <= durable;
            if ready {
                out.push((slot, generation, durable));
            }
            !ready
        });
    }
}
