//! A model's counters, in memory its threads and its forked children share: each counter is
//! striped over cache lines by thread id, so threads on different cores seldom touch the
//! same line; the supervisor sums the stripes each second.

use std::cell::Cell;
use std::io;

use crate::stats::Counters;
use crate::sys::SharedCounter;

/// What a model counts (the servers' counters of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Accepted,
    Closed,
    /// Connections the model could not take: accept errors, select's fds at or above
    /// FD_SETSIZE, a thread or process it could not start.
    Refused,
    OverCap,
    ConnErrors,
    BytesIn,
    BytesOut,
    /// Reads that carried data.
    Recvs,
    /// Write calls.
    Sends,
    ShortSends,
    /// System calls the model made itself (libc's own threads, as glibc's AIO has, are not
    /// counted: the models bench counts every thread's with perf).
    Syscalls,
    /// SIGIO's queue overflowed and every connection was polled instead (sigio).
    Overflows,
    /// Child processes alive now (fork).
    Children,
}

const FIELDS: usize = Field::Children as usize + 1;
/// A stripe is 128 bytes (two cache lines, for the adjacent-line prefetcher): 16 slots.
const STRIDE: usize = 16;
const STRIPES: usize = 64;
const _: () = assert!(FIELDS <= STRIDE);

thread_local! {
    /// This thread's stripe: its kernel thread id, spread over the stripes.
    static STRIPE: Cell<Option<usize>> = const { Cell::new(None) };
}

pub struct Stats {
    slots: SharedCounter,
}

impl Stats {
    /// All counters at 0, in shared memory that `fork` children keep.
    pub fn new() -> io::Result<Stats> {
        Ok(Stats {
            slots: SharedCounter::create(STRIPE_SLOTS)?,
        })
    }

    pub fn add(&self, f: Field, n: u64) {
        let stripe = STRIPE.with(|s| match s.get() {
            Some(i) => i,
            None => {
                let i = crate::sys::gettid() as usize % STRIPES;
                s.set(Some(i));
                i
            }
        });
        self.slots
            .slot(stripe * STRIDE + f as usize)
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn sub(&self, f: Field, n: u64) {
        // Wrapping: a gauge's stripes are summed, so one stripe may go below 0.
        self.add(f, n.wrapping_neg());
    }

    /// One more system call made.
    pub fn call(&self) {
        self.add(Field::Syscalls, 1);
    }

    pub fn get(&self, f: Field) -> u64 {
        (0..STRIPES)
            .map(|s| {
                self.slots
                    .slot(s * STRIDE + f as usize)
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .fold(0u64, u64::wrapping_add)
    }

    /// The servers' counters, as far as a model has them.
    pub fn counters(&self) -> Counters {
        Counters {
            accepted: self.get(Field::Accepted),
            closed: self.get(Field::Closed),
            refused: self.get(Field::Refused),
            over_cap: self.get(Field::OverCap),
            conn_errors: self.get(Field::ConnErrors),
            bytes_in: self.get(Field::BytesIn),
            bytes_out: self.get(Field::BytesOut),
            recvs: self.get(Field::Recvs),
            sends: self.get(Field::Sends),
            short_sends: self.get(Field::ShortSends),
            syscalls: self.get(Field::Syscalls),
            ..Counters::default()
        }
    }
}

const STRIPE_SLOTS: usize = STRIPES * STRIDE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_add_up_and_gauges_go_down() {
        let stats = std::sync::Arc::new(Stats::new().unwrap());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.add(Field::BytesIn, 3);
                        s.add(Field::Children, 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        stats.sub(Field::Children, 8000);
        assert_eq!(stats.get(Field::BytesIn), 24_000);
        assert_eq!(stats.get(Field::Children), 0);
        assert_eq!(stats.counters().bytes_in, 24_000);
    }
}
