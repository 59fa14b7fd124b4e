//! The shard core: what every shard keeps whatever its engine (the Proactor's ring, the
//! Reactor's epoll set). Its counters and their publication, the timer wheel and the clock it
//! runs on, HTTP's limits and the Date of the current second, the `--max-conns` gate, and the
//! stop deadline, with one rule for how long a loop turn may wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Gate, ShardCtx};
use crate::proto::http::{self, Reading};
use crate::proto::{Capture, Outcome, Session, redis};
use crate::stats::{Counters, SharedCounters};
use crate::timer::{Expired, Timeouts, Wheel};

/// The settings a running server takes on SIGHUP (`server::reload`): the timeouts and the
/// shutdown timeout. Each shard looks at the version once per loop turn (one atomic load)
/// and reads the settings only when it changed.
#[derive(Debug, Default)]
pub struct Live {
    version: AtomicU64,
    settings: Mutex<Option<(Timeouts, Duration)>>,
}

impl Live {
    pub fn set(&self, timeouts: Timeouts, shutdown_timeout: Duration) {
        if let Ok(mut s) = self.settings.lock() {
            *s = Some((timeouts, shutdown_timeout));
        }
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// What a connection speaking HTTP or Redis reads from its shard: HTTP's limits and the
/// Date of this second, or Redis's keyspace.
#[derive(Debug, Clone)]
pub struct ProtoEnv {
    pub limits: http::Limits,
    pub date: http::Date,
    /// The start of the shard's loop turn (the access log times requests by it).
    pub now: Instant,
    /// Redis, when it is served; HTTP otherwise.
    pub redis: Option<RedisEnv>,
}

/// What a Redis connection reads from its shard.
#[derive(Debug, Clone)]
pub struct RedisEnv {
    pub keyspace: Arc<redis::Keyspace>,
    pub limits: redis::Limits,
    /// Unix time in milliseconds at the start of the loop turn.
    pub now_ms: u64,
    /// `--appendfsync always`: a reply to a write waits until the journal is durable.
    pub hold: bool,
    /// When this shard last asked whether the keyspace's active expiry is due.
    swept: Instant,
}

/// The keyspace's active expiry (a bounded sweep) runs this often, by whichever shard comes
/// first (`Keyspace::sweep_due`), as Redis's serverCron does at its default hz 10.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

impl RedisEnv {
    pub fn new(keyspace: Arc<redis::Keyspace>, limits: redis::Limits, hold: bool) -> RedisEnv {
        RedisEnv {
            keyspace,
            limits,
            now_ms: unix_ms(),
            hold,
            swept: Instant::now(),
        }
    }
}

impl ProtoEnv {
    /// A new connection's session.
    pub fn session(&self) -> Session {
        match self.redis {
            Some(_) => Session::Redis(redis::Session::new()),
            None => Session::Http(http::Session::new()),
        }
    }

    /// Feeds `input` to `session`, appending the answers to `out`; a connection that logs
    /// gathers its requests in `log`.
    pub fn input(
        &self,
        session: &mut Session,
        input: &[u8],
        out: &mut Vec<u8>,
        log: Option<&mut Capture>,
    ) -> Outcome {
        match (session, &self.redis) {
            (Session::Redis(s), Some(r)) => {
                let env = redis::Env {
                    keyspace: &r.keyspace,
                    limits: r.limits,
                    now_ms: r.now_ms,
                    now: self.now,
                };
                let log = match log {
                    Some(Capture::Redis(c)) => Some(c),
                    _ => None,
                };
                let o = s.on_input(input, &env, out, log);
                Outcome {
                    answers: o.answers,
                    close: o.close,
                    lsn: o.lsn.filter(|_| r.hold),
                }
            }
            (Session::Http(s), _) => {
                let log = match log {
                    Some(Capture::Http(c)) => Some((c, self.now)),
                    _ => None,
                };
                let o = s.on_input_logged(input, &self.limits, &self.date, out, log);
                Outcome {
                    answers: o.answers,
                    close: o.close,
                    lsn: None,
                }
            }
            (Session::Redis(_), None) => unreachable!("a Redis session in a shard serving HTTP"),
        }
    }

    /// The header or body timeout passed: HTTP answers 408 and closes (true); Redis has
    /// neither timeout (false: abort).
    pub fn time_out(
        &self,
        session: &mut Session,
        out: &mut Vec<u8>,
        log: Option<&mut Capture>,
    ) -> bool {
        let Session::Http(s) = session else {
            return false;
        };
        let log = match log {
            Some(Capture::Http(c)) => Some((c, self.now)),
            _ => None,
        };
        s.time_out(&self.date, out, log);
        true
    }
}

/// Which part of a request `session` is reading (HTTP's header and body timeouts).
pub fn reading(session: &Session) -> Reading {
    match session {
        Session::Http(s) => s.reading(),
        Session::Redis(_) => Reading::Between,
    }
}

/// The wall clock in milliseconds since the Unix epoch (Redis's expiry times).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Grown output queues above this are dropped once drained rather than kept idle (both
/// engines' connections).
pub const KEEP_QUEUE_CAPACITY: usize = 64 * 1024;

/// Events a batched wait is content with before its delay has passed (both engines: the
/// Proactor's minimum wait, the Reactor's sleep-then-poll).
pub const BATCH_WANT: usize = crate::uring::BATCH_WANT;

/// While stopping, a loop turn waits at least this long (no spin while owed output drains)...
const STOP_WAIT_MIN: Duration = Duration::from_millis(1);
/// ...and at most this long, so the deadline is noticed on time.
const STOP_WAIT_MAX: Duration = Duration::from_millis(100);

pub struct ShardCore {
    pub counters: Counters,
    shared: Arc<SharedCounters>,
    /// Each connection's deadlines (`Timeouts`), keyed by its slot.
    pub wheel: Wheel,
    expired: Vec<(u32, Expired)>,
    /// HTTP's or Redis's environment, when one is served; echo when None.
    pub proto: Option<ProtoEnv>,
    gate: Option<Arc<Gate>>,
    shutdown_timeout: Duration,
    /// Set by `begin_stop`: owed output must be sent by then.
    deadline: Option<Instant>,
    live: Arc<Live>,
    /// The version of `live` applied.
    seen: u64,
}

impl ShardCore {
    /// The core of a shard; the context's fds (listeners, wake) stay with the engine.
    pub fn new(ctx: &ShardCtx) -> ShardCore {
        ShardCore {
            counters: Counters::default(),
            shared: ctx.counters.clone(),
            wheel: Wheel::new(ctx.timeouts, Instant::now()),
            expired: Vec::new(),
            proto: (ctx.http.is_some() || ctx.redis.is_some()).then(|| ProtoEnv {
                limits: ctx.http.unwrap_or_default(),
                date: http::Date::now(),
                now: Instant::now(),
                redis: ctx.redis.as_ref().map(|r| {
                    let hold = r.aof.as_ref().is_some_and(|a| a.holds());
                    RedisEnv::new(r.keyspace.clone(), r.limits, hold)
                }),
            }),
            gate: ctx.gate.clone(),
            shutdown_timeout: ctx.shutdown_timeout,
            deadline: None,
            live: ctx.live.clone(),
            seen: 0,
        }
    }

    /// How long the loop may wait for events: until the wheel's next tick, and while
    /// stopping until the deadline (within `STOP_WAIT_MIN..=STOP_WAIT_MAX`); None: no bound.
    pub fn wait_timeout(&self, now: Instant) -> Option<Duration> {
        let stop = self.deadline.map(|d| {
            d.saturating_duration_since(now)
                .clamp(STOP_WAIT_MIN, STOP_WAIT_MAX)
        });
        match (stop, self.wheel.next_wake(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The start of a loop turn, after the wait: deadlines count from `now`, answers carry
    /// this second's Date.
    pub fn turn(&mut self, now: Instant) {
        let version = self.live.version.load(Ordering::Acquire);
        if version != self.seen {
            self.seen = version;
            let settings = self.live.settings.lock().ok().and_then(|s| *s);
            if let Some((timeouts, shutdown)) = settings {
                self.wheel.set_timeouts(timeouts);
                self.shutdown_timeout = shutdown;
            }
        }
        self.wheel.set_clock(now);
        if let Some(env) = &mut self.proto {
            env.date.refresh();
            env.now = now;
            if let Some(r) = &mut env.redis {
                r.now_ms = unix_ms();
                if now >= r.swept + SWEEP_EVERY {
                    r.swept = now;
                    let every = SWEEP_EVERY.as_millis() as u64;
                    if r.keyspace.sweep_due(r.now_ms, every) {
                        r.keyspace.sweep(r.now_ms);
                    }
                }
            }
        }
    }

    /// The deadlines that passed, counted (all but lingers); hand the Vec back
    /// with `expired_done` to keep its allocation.
    pub fn take_expired(&mut self) -> Vec<(u32, Expired)> {
        self.wheel.expire(&mut self.expired);
        for (_, why) in &self.expired {
            match why {
                Expired::Idle => self.counters.idle_timeouts += 1,
                Expired::Header => self.counters.header_timeouts += 1,
                Expired::Body => self.counters.body_timeouts += 1,
                Expired::Send => self.counters.send_timeouts += 1,
                Expired::Linger => {}
            }
        }
        std::mem::take(&mut self.expired)
    }

    pub fn expired_done(&mut self, mut done: Vec<(u32, Expired)>) {
        done.clear();
        self.expired = done;
    }

    /// Takes a place under `--max-conns` for a new connection; false at the cap.
    pub fn enter(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.enter())
    }

    /// A connection that `enter` let in has closed.
    pub fn leave(&self) {
        if let Some(gate) = &self.gate {
            gate.leave();
        }
    }

    /// Starts the stop: owed output may take up to the shutdown timeout from now. False if
    /// the shard was already stopping.
    pub fn begin_stop(&mut self, now: Instant) -> bool {
        if self.deadline.is_some() {
            return false;
        }
        self.deadline = Some(now + self.shutdown_timeout);
        true
    }

    pub fn stopping(&self) -> bool {
        self.deadline.is_some()
    }

    /// Stopping, and the shutdown timeout has passed.
    pub fn overdue(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Makes the counters visible to the main thread (once per loop turn).
    pub fn publish(&self) {
        self.shared.publish(&self.counters);
    }
}
