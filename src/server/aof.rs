//! The append-only file (`--appendonly FILE`, `--appendfsync`), Redis's persistence: every
//! write command, as the keyspace's journal recorded it (RESP, in the order commands on a key
//! ran), appended to FILE; replayed at start.
//!
//! The journal is one per server, so its records go to the file one batch at a time, in its
//! order. How a batch gets there is each engine's. The Proactor's shard that finds records
//! waiting (and no batch in flight) hands them to its ring, with `always` linked to an
//! fdatasync, and holds the replies to those writes until the sync completes: every write
//! that arrived meanwhile shares the next sync (group commit), and no thread ever waits for
//! the disk; the shard that saw the sync complete wakes the others that hold replies. The
//! Reactor does what Redis does: write(2) from the loop, fdatasync inline before the replies
//! with `always`, and with `everysec` on a thread of its own once a second.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::Fsync;
use crate::error::{Error, Result};
use crate::proto::redis::{Journal, Keyspace};
use crate::stats::Counters;
use crate::sys;

/// `everysec`: the file is fsynced about this often.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

pub struct Aof {
    path: PathBuf,
    file: Arc<OwnedFd>,
    policy: Fsync,
    /// The Reactor's shards write in turn, so that batches reach the file in the journal's
    /// order.
    turn: Mutex<()>,
    /// Per shard, for `always`: an eventfd signalled when the journal becomes durable while
    /// the shard holds replies.
    waiters: Vec<Waiter>,
    /// `everysec`: when the last fsync began, in ms since `epoch`.
    synced_ms: AtomicU64,
    epoch: Instant,
    /// A write error was said on stderr: the next ones are only counted.
    said: AtomicBool,
}

struct Waiter {
    fd: OwnedFd,
    waiting: AtomicBool,
}

impl Aof {
    /// Opens FILE (created if absent), replays its commands into `keyspace`, and cuts a torn
    /// last record off, saying so on stderr; `shards` will write it.
    pub fn open(path: &Path, policy: Fsync, keyspace: &Keyspace, shards: usize) -> Result<Aof> {
        let name = || format!("--appendonly {}", path.display());
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(name(), e)),
        };
        let replay = keyspace.replay(&bytes, crate::server::core::unix_ms());
        if let Some(e) = replay.error {
            return Err(Error::BadFlag(format!(
                "{}: a malformed record at byte {} ({e}); `redis-check-aof --fix {}` cuts the \
                 file there, losing what follows",
                name(),
                replay.valid,
                path.display()
            )));
        }
        let file = sys::open_append(path).map_err(|e| Error::io(name(), e))?;
        if replay.valid < bytes.len() {
            sys::truncate(file.as_raw_fd(), replay.valid as u64)
                .map_err(|e| Error::io(format!("{}: cutting a torn last record", name()), e))?;
            eprintln!(
                "{}: cut a torn last record ({} bytes at byte {}), as redis-check-aof --fix \
                 would",
                name(),
                bytes.len() - replay.valid,
                replay.valid
            );
        }
        if replay.commands > 0 {
            eprintln!(
                "{}: replayed {} commands ({} keys)",
                name(),
                replay.commands,
                keyspace.len()
            );
        }
        let waiters = (0..shards)
            .map(|_| {
                Ok(Waiter {
                    fd: sys::eventfd().map_err(|e| Error::io("eventfd", e))?,
                    waiting: AtomicBool::new(false),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Aof {
            path: path.to_path_buf(),
            file: Arc::new(file),
            policy,
            turn: Mutex::new(()),
            waiters,
            synced_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            said: AtomicBool::new(false),
        })
    }

    pub fn policy(&self) -> Fsync {
        self.policy
    }

    /// `always`: replies to writes wait until the journal is durable.
    pub fn holds(&self) -> bool {
        self.policy == Fsync::Always
    }

    pub fn file(&self) -> Arc<OwnedFd> {
        self.file.clone()
    }

    /// The eventfd shard `shard` reads to learn that the journal became durable.
    pub fn notify_fd(&self, shard: usize) -> RawFd {
        self.waiters[shard].fd.as_raw_fd()
    }

    /// Shard `shard` holds replies until the journal is durable further: wake it when it is.
    pub fn wait(&self, shard: usize) {
        self.waiters[shard].waiting.store(true, Ordering::Release);
    }

    /// The journal just became durable further (shard `by` saw it): wakes the other shards
    /// that hold replies.
    pub fn durable_now(&self, by: usize) {
        for (i, w) in self.waiters.iter().enumerate() {
            if i != by && w.waiting.swap(false, Ordering::AcqRel) {
                let _ = sys::eventfd_wake(w.fd.as_raw_fd());
            }
        }
    }

    /// `everysec`: whether the caller should fsync now (a second has passed since the last
    /// one began; only one caller is told so).
    pub fn sync_due(&self) -> bool {
        if self.policy != Fsync::Everysec {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.synced_ms.load(Ordering::Relaxed);
        now >= last + SYNC_EVERY.as_millis() as u64
            && self
                .synced_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// The Reactor: writes what the journal holds with write(2), and with `sync` fdatasyncs
    /// it, marking it durable; one shard at a time. True unless a write or sync failed: then
    /// (with `sync`) everything journaled before the call is in the file, and durable,
    /// since a shard that found nothing to take came after one that wrote and synced it.
    pub fn write_out(&self, journal: &Journal, sync: bool, counters: &mut Counters) -> bool {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let Some((bytes, end)) = journal.take(Vec::new()) else {
            return true;
        };
        let wrote = sys::write_all(self.file.as_raw_fd(), &bytes);
        journal.written();
        match wrote {
            Ok(()) => {
                counters.aof_writes += 1;
                counters.aof_bytes += bytes.len() as u64;
            }
            Err(e) => {
                self.failed("writing", e, counters);
                return false;
            }
        }
        if sync {
            match sys::fdatasync(self.file.as_raw_fd()) {
                Ok(()) => {
                    counters.aof_syncs += 1;
                    journal.set_durable(end);
                }
                Err(e) => {
                    self.failed("fsyncing", e, counters);
                    return false;
                }
            }
        }
        true
    }

    /// The Reactor's `everysec` thread: fdatasyncs the file once a second until `stop`; what
    /// it counted (its fsyncs and their failures).
    pub fn sync_every_second(&self, stop: &AtomicBool) -> Counters {
        let mut counters = Counters::default();
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
            if self.sync_due() {
                match sys::fdatasync(self.file.as_raw_fd()) {
                    Ok(()) => counters.aof_syncs += 1,
                    Err(e) => self.failed("fsyncing", e, &mut counters),
                }
            }
        }
        counters
    }

    /// A write or fsync failed: said once on stderr (by any shard), counted each time. Redis
    /// stops taking writes then; here serving goes on, and the count says what was lost.
    pub fn failed(&self, what: &str, e: io::Error, counters: &mut Counters) {
        counters.aof_errors += 1;
        if !self.said.swap(true, Ordering::AcqRel) {
            eprintln!(
                "error: {what} --appendonly {}: {e} (said once; counted in aof_errors)",
                self.path.display()
            );
        }
    }
}
