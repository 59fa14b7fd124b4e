//! Per-shard counters: each shard owns plain counters and publishes them after every loop
//! turn into its `SharedCounters` (relaxed stores, no contention); the main thread sums them
//! for the per-second line, the summary and `--stats-json`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

macro_rules! counters {
    (
        counters { $($name:ident: $doc:literal,)* }
        gauges { $($gauge:ident: $gdoc:literal,)* }
    ) => {
        /// One shard's counters, and its gauges as of the same moment (or their sums).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Counters {
            $(#[doc = $doc] pub $name: u64,)*
            $(#[doc = $gdoc] pub $gauge: u64,)*
        }

        /// The published copy of a shard's counters, readable from other threads.
        #[derive(Debug, Default)]
        pub struct SharedCounters {
            $($name: AtomicU64,)*
            $($gauge: AtomicU64,)*
        }

        impl SharedCounters {
            pub fn publish(&self, c: &Counters) {
                $(self.$name.store(c.$name, Relaxed);)*
                $(self.$gauge.store(c.$gauge, Relaxed);)*
            }

            pub fn snapshot(&self) -> Counters {
                Counters {
                    $($name: self.$name.load(Relaxed),)*
                    $($gauge: self.$gauge.load(Relaxed),)*
                }
            }
        }

        impl Counters {
            /// Every counter as (name, its doc, value), in declaration order.
            pub fn fields(&self) -> [(&'static str, &'static str, u64); [$(stringify!($name),)*].len()] {
                [$((stringify!($name), $doc, self.$name),)*]
            }

            /// Every gauge as (name, its doc, value), in declaration order.
            pub fn gauges(&self) -> [(&'static str, &'static str, u64); [$(stringify!($gauge),)*].len()] {
                [$((stringify!($gauge), $gdoc, self.$gauge),)*]
            }
        }

        impl std::ops::AddAssign for Counters {
            fn add_assign(&mut self, o: Self) {
                $(self.$name += o.$name;)*
                $(self.$gauge += o.$gauge;)*
            }
        }
    };
}

counters! {
    counters {
        accepted: "Connections accepted.",
        closed: "Connections closed (by either side).",
        refused: "Connections the server could not take (accept errors, -ENFILE).",
        over_cap: "Connections closed at once because --max-conns were already open.",
        idle_timeouts: "Connections closed after --idle-timeout without progress.",
        header_timeouts: "HTTP connections answered 408 and closed after --header-timeout.",
        body_timeouts: "HTTP connections answered 408 and closed after --body-timeout.",
        send_timeouts: "Connections closed after --send-timeout with output owed and none taken.",
        conn_errors: "Connections ended by an error: reset, broken pipe.",
        requests: "HTTP requests or Redis commands answered (errors included).",
        bytes_in: "Bytes received.",
        bytes_out: "Bytes sent.",
        recvs: "Receive completions that carried data.",
        sends: "Send operations submitted (the Reactor: write calls).",
        short_sends: "Sends that took fewer bytes than offered and were resubmitted.",
        enobufs: "Multishot recvs ended by an empty buffer ring (-ENOBUFS).",
        rearms: "Multishot operations re-armed after they ended.",
        accept_pauses: "Times accepting paused because the fixed-file table neared full.",
        syscalls: "System calls into the kernel (the Proactor: io_uring_enter).",
        cq_overflow: "Completions that overflowed the CQ (kept by the kernel, never lost).",
        log_lines: "Access log lines made (--access-log).",
        log_bytes: "Access log bytes written to the file.",
        log_writes: "Writes to the access log file.",
        log_errors: "Access log writes (or fdatasyncs) that failed (their lines are lost).",
        log_syncs: "fdatasyncs of the access log (--access-log-fsync).",
        log_stall_us: "Microseconds the shard stopped reading because its access log buffer was full.",
        log_pending_max: "The most access log lines waiting for the file at once (summed over shards).",
        aof_writes: "Writes to the append-only file (--appendonly).",
        aof_bytes: "Bytes written to the append-only file.",
        aof_syncs: "fdatasyncs of the append-only file (--appendfsync always or everysec).",
        aof_errors: "Append-only file writes or fdatasyncs that failed.",
        aof_held: "Reads whose Redis replies waited for the append-only file to be durable (--appendfsync always).",
    }
    gauges {
        output_owed: "Connections whose output waits for the peer to take it (the Proactor: a send in flight; the Reactor: a queue waiting for EPOLLOUT).",
        waiting_buffers: "Connections whose recv waits for provided buffers to come back (the Proactor).",
    }
}

impl Counters {
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Counters {
        let mut total = Counters::default();
        for c in all {
            total += *c;
        }
        total
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }
}

/// The per-second line: totals now, rates since the previous line.
pub fn stats_line(elapsed: Duration, now: &Counters, prev: &Counters, dt: Duration) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
    let log = if now.log_lines + now.log_errors > 0 {
        format!(
            " log_lines/s={:.0} log_pending_max={} log_stall_ms={} log_errors={}",
            rate(now.log_lines, prev.log_lines),
            now.log_pending_max,
            now.log_stall_us / 1000,
            now.log_errors,
        )
    } else {
        String::new()
    };
    let aof = if now.aof_writes + now.aof_errors > 0 {
        format!(
            " aof_writes/s={:.0} aof_syncs/s={:.0} aof_errors={}",
            rate(now.aof_writes, prev.aof_writes),
            rate(now.aof_syncs, prev.aof_syncs),
            now.aof_errors,
        )
    } else {
        String::new()
    };
    format!(
        "t={:.0}s conns={} accepted/s={:.0} closed/s={:.0} in={:.1}MB/s out={:.1}MB/s recvs/s={:.0} \
         sends/s={:.0} requests/s={:.0} syscalls/s={:.0} enobufs={} pauses={} errors={} \
         over_cap={} timeouts={}{log}{aof}",
        elapsed.as_secs_f64(),
        now.active(),
        rate(now.accepted, prev.accepted),
        rate(now.closed, prev.closed),
        rate(now.bytes_in, prev.bytes_in) / 1e6,
        rate(now.bytes_out, prev.bytes_out) / 1e6,
        rate(now.recvs, prev.recvs),
        rate(now.sends, prev.sends),
        rate(now.requests, prev.requests),
        rate(now.syscalls, prev.syscalls),
        now.enobufs,
        now.accept_pauses,
        now.conn_errors,
        now.over_cap,
        now.idle_timeouts + now.header_timeouts + now.body_timeouts + now.send_timeouts,
    )
}

/// What a server reports at exit, also written as JSON by `--stats-json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub engine: &'static str,
    pub duration_s: f64,
    pub shards: usize,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub totals: Counters,
    pub per_shard: Vec<Counters>,
    /// Worker processes that died before they were asked to stop (the Reactor's master).
    pub died: Vec<usize>,
    /// Worker slots restarted after a death, once per restart.
    pub restarted: Vec<usize>,
}

impl Summary {
    /// The summary of a run that started at `started`, with CPU `(user, sys)` seconds.
    pub fn new(
        engine: &'static str,
        started: std::time::Instant,
        per_shard: Vec<Counters>,
        (cpu_user_s, cpu_sys_s): (f64, f64),
        died: Vec<usize>,
    ) -> Self {
        Summary {
            engine,
            duration_s: started.elapsed().as_secs_f64(),
            shards: per_shard.len(),
            cpu_user_s,
            cpu_sys_s,
            totals: Counters::sum(&per_shard),
            per_shard,
            died,
            restarted: Vec::new(),
        }
    }

    pub fn human(&self) -> String {
        let t = &self.totals;
        let log = if t.log_lines + t.log_errors > 0 {
            format!(
                ", access log: {} lines, {} B in {} writes, {} errors, at most {} pending, \
                 stalled {} ms",
                t.log_lines,
                t.log_bytes,
                t.log_writes,
                t.log_errors,
                t.log_pending_max,
                t.log_stall_us / 1000,
            )
        } else {
            String::new()
        };
        let aof = if t.aof_writes + t.aof_errors > 0 {
            format!(
                ", append-only file: {} B in {} writes, {} fsyncs, {} errors, {} reads held",
                t.aof_bytes, t.aof_writes, t.aof_syncs, t.aof_errors, t.aof_held,
            )
        } else {
            String::new()
        };
        let died = if self.died.is_empty() {
            String::new()
        } else {
            format!(
                ", workers died: {:?}, restarted: {:?}",
                self.died, self.restarted
            )
        };
        format!(
            "{} summary: {:.1}s, {} shards, accepted {}, closed {}, refused {}, over cap {}, \
             errors {}, idle timeouts {}, header timeouts {}, body timeouts {}, send timeouts {}, requests {}, in {} B, out {} B, sends {} ({} short), enobufs {}, re-arms {}, accept pauses {}, \
             syscalls {}, cq overflow {}, cpu user {:.2}s sys {:.2}s{log}{aof}{died}",
            self.engine,
            self.duration_s,
            self.shards,
            t.accepted,
            t.closed,
            t.refused,
            t.over_cap,
            t.conn_errors,
            t.idle_timeouts,
            t.header_timeouts,
            t.body_timeouts,
            t.send_timeouts,
            t.requests,
            t.bytes_in,
            t.bytes_out,
            t.sends,
            t.short_sends,
            t.enobufs,
            t.rearms,
            t.accept_pauses,
            t.syscalls,
            t.cq_overflow,
            self.cpu_user_s,
            self.cpu_sys_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_snapshot_and_sum() {
        let shared = SharedCounters::default();
        let c = Counters {
            accepted: 5,
            closed: 2,
            bytes_in: 100,
            ..Default::default()
        };
        shared.publish(&c);
        let s = shared.snapshot();
        assert_eq!(s, c);
        let total = Counters::sum([&s, &s]);
        assert_eq!(total.accepted, 10);
        assert_eq!(total.active(), 6);
    }

    #[test]
    fn stats_line_shows_rates() {
        let prev = Counters::default();
        let now = Counters {
            accepted: 10,
            bytes_in: 2_000_000,
            ..Default::default()
        };
        let line = stats_line(Duration::from_secs(3), &now, &prev, Duration::from_secs(2));
        assert!(line.starts_with("t=3s conns=10 accepted/s=5 "), "{line}");
        assert!(line.contains("in=1.0MB/s"), "{line}");
    }
}
