//! Several shards on one thread: where RLIMIT_NOFILE caps each ring's fixed-file table
//! below a core's share of the connections, a core runs several rings, and one thread drives
//! them all instead of a thread per ring.
//!
//! A thread can wait in only one io_uring_enter, and with DEFER_TASKRUN a ring's completions
//! are posted only inside its own thread's enter. What tells the thread that a ring has some
//! is an eventfd registered with the ring: the kernel signals it when the ring's deferred
//! work goes from none to some (io_req_local_work_add), and the ring's thread can mute it
//! (IORING_CQ_EVENTFD_DISABLED) while it runs the ring, whose own completions would signal
//! it too (see `Shard::step`). So each ring gets an eventfd, the thread waits on all of them
//! in one edge-triggered epoll set (an eventfd that is never read reports each signal as a
//! new edge), and a go of a ready ring is an enter that runs its deferred work, a turn on
//! what that posted, and an enter that submits what the turn queued. The thread goes round
//! its ready rings one go each, so that a busy one cannot starve the others, and waits only
//! when none has work.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::shard::{Cqes, Shard};
use crate::stats::Counters;
use crate::sys;

/// Runs `shards` until each has been asked to stop and has closed every connection. With a
/// `batch`, a round (the gos and the wait) lasts at least that long: once a wait has found
/// some but not all of the rings ready, the thread sleeps out the rest of the round and then
/// takes what came meanwhile, so more work gathers for each go; at saturation the gos fill
/// the round and it sleeps not at all. The counters of each, in order.
pub fn run(mut shards: Vec<Shard>, batch: Option<Duration>) -> io::Result<Vec<Counters>> {
    let epoll = sys::epoll_create()?;
    for (i, shard) in shards.iter_mut().enumerate() {
        shard.start()?;
        let fd = shard
            .notify_fd()
            .expect("a shard of a group has a notify eventfd");
        let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
        sys::epoll_add(epoll.as_raw_fd(), fd, events, i as u64)?;
    }
    let n = shards.len();
    // Every shard goes once first: that submits its accepts and wake-up read.
    let mut ready = vec![true; n];
    let mut due: Vec<Option<Instant>> = vec![None; n];
    let mut done: Vec<Option<Counters>> = vec![None; n];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; n];
    let mut cqes = Cqes::default();
    loop {
        let round = Instant::now();
        for i in 0..n {
            if done[i].is_some() {
                continue;
            }
            let now = Instant::now();
            if !(ready[i] || due[i].is_some_and(|d| d <= now)) {
                continue;
            }
            ready[i] = shards[i].step(&mut cqes)?;
            if shards[i].finished() {
                done[i] = Some(shards[i].finish());
                continue;
            }
            let now = Instant::now();
            due[i] = shards[i].wait_timeout(now).map(|t| now + t);
        }
        if done.iter().all(Option::is_some) {
            return Ok(done.into_iter().flatten().collect());
        }
        let timeout = if ready.iter().any(|&r| r) {
            0
        } else {
            let now = Instant::now();
            match due.iter().flatten().min() {
                // epoll_wait counts whole milliseconds: round up, never a busy 0.
                Some(d) => d
                    .saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000)
                    .max(1) as i32,
                None => -1,
            }
        };
        let fd = epoll.as_raw_fd();
        let mut got = sys::epoll_wait(fd, &mut events, timeout)?;
        let mut waits = 1;
        // A round lasts at least the batch: its gos, then a sleep for the rest.
        let rest = batch.map_or(Duration::ZERO, |b| {
            (round + b).saturating_duration_since(Instant::now())
        });
        if got > 0 && got < n && !rest.is_zero() {
            // Edge-triggered: what signalled during the sleep is reported by the next wait,
            // which does not block.
            std::thread::sleep(rest);
            got += sys::epoll_wait(fd, &mut events[got..], 0)?;
            waits += 2;
        }
        // Counted on a shard still running, so that its published syscalls include them.
        if let Some(live) = done.iter().position(Option::is_none) {
            shards[live].count_waits(waits);
        }
        for ev in &events[..got] {
            ready[ev.u64 as usize] = true;
        }
    }
}
