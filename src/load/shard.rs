//! One load-generator shard: a pinned thread with its own ring whose connections are direct
//! descriptors in chosen slots (SOCKET linked to CONNECT), so the process needs no fd per
//! connection. Phases: connect every connection (a bounded number in flight, optionally
//! paced), wait for every shard to get there, run the workload, let outstanding requests
//! finish, then close everything and wait for the ring to go quiet.
//!
//! Closed loop: each connection keeps `depth` requests outstanding. Open loop: the shard's
//! share of `--rate` is one schedule, request n due at start + n / rate, dealt round-robin to
//! the connections, so every connection gets an even share without a timer each; a request
//! is sent when due whatever is outstanding, and its latency runs from when it was due
//! (corrected for coordinated omission), with the latency from its actual send kept beside.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::RedisCounts;
use super::conn::{Completed, Fault, Requests, Send, Stream};
use crate::proto::redis::check::{Reply, Verb};
use crate::uring::probe::Need;
use crate::uring::{self, ConnectSteps, RingConfig};

uring::op_kinds! {
    /// What an operation of the load generator's ring was for, the top byte of its `user_data`;
    /// the slot is the connection's, the generation always 0 (a slot is never reused).
    enum Kind {
        /// SOCKET into the connection's direct slot.
        Socket,
        /// SETSOCKOPT (IP_BIND_ADDRESS_NO_PORT) on the new socket, linked after SOCKET.
        SockOpt,
        /// BIND of the new socket to its source address, linked after SETSOCKOPT.
        Bind,
        /// CONNECT, linked after SOCKET (or BIND).
        Connect,
        /// Send of requests: from the pinned request region, or (Redis) a buffer.
        Send,
        /// Multishot recv of answers.
        Recv,
        /// Cancel requests; its own completion carries nothing to act on.
        Cancel,
        /// Close of the direct descriptor.
        Close,
    }
}

type Ring = uring::Ring<Kind>;
type Completion = uring::Completion<Kind>;

fn ud(kind: Kind, slot: u32) -> uring::UserData<Kind> {
    uring::UserData::new(kind, slot, 0)
}

/// What all shards share: progress counters and the phase gate.
#[derive(Debug, Default)]
pub struct Shared {
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub requests: AtomicU64,
    /// Shards that have finished connecting.
    pub ramped: AtomicUsize,
    /// Set when any shard failed: the others stop.
    pub abort: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// `depth` batches of `pipeline` requests outstanding per connection: a batch goes out in
    /// one send, the next once a whole batch has been answered.
    Closed { depth: u32, pipeline: u32 },
    /// This shard's requests per second.
    Open { rate: f64 },
}

pub struct ShardPlan {
    /// Global index of this shard's first connection.
    pub first_conn: u64,
    pub conns: u32,
    pub shards: usize,
    /// Server addresses; connection i goes to `addrs[i % addrs.len()]`.
    pub addrs: Vec<std::net::SocketAddr>,
    /// Source addresses, of the servers' family; connection i binds
    /// `sources[i / addrs.len() % sources.len()]`.
    pub sources: Vec<std::net::SocketAddr>,
    pub size: usize,
    /// The request region: the echo pattern, or copies of the HTTP request (Redis: empty).
    pub pattern: Box<[u8]>,
    pub kind: Requests,
    pub workload: Workload,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per connection, when the run is counted rather than timed.
    pub requests: Option<u64>,
    pub connect_inflight: usize,
    /// This shard's connects per second, if paced.
    pub connect_rate: Option<f64>,
    pub bufs: u16,
    pub buf_size: u32,
    /// See `RingConfig::batch_usec`.
    pub batch_usec: u32,
    /// Where to send each second's latency histogram (for `--hlog`).
    pub intervals: Option<Sender<(u64, Histogram<u64>)>>,
}

/// What one shard measured.
pub struct ShardReport {
    pub established: u64,
    pub failed: u64,
    pub closed_by_peer: u64,
    /// Requests due in the measured window and answered.
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    /// Redis: the measured requests by command and reply.
    pub redis: RedisCounts,
    pub latency_us: Histogram<u64>,
    pub uncorrected_us: Histogram<u64>,
    pub connect_us: Histogram<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Closed,
}

struct Client {
    state: State,
    /// SOCKET installed the slot (so it needs a CLOSE).
    installed: bool,
    recv_armed: bool,
    sending: bool,
    connect_started: Instant,
    stream: Stream,
}

/// After the run's duration, how long requests already sent may take to come back before
/// their connections are closed anyway (they are then counted as unanswered).
const END_GRACE: Duration = Duration::from_secs(2);
/// The longest a loop turn waits with nothing due.
const TICK: Duration = Duration::from_millis(20);

/// Latencies from 1 us to 100 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

fn errno_name(res: i32) -> String {
    io::Error::from_raw_os_error(-res)
        .kind()
        .to_string()
        .replace(' ', "_")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// The measured window: requests due in [from, until) count.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

pub struct LoadShard {
    ring: Ring,
    plan: ShardPlan,
    dests: Vec<usize>,
    sources: Vec<usize>,
    region: usize,
    clients: Vec<Client>,
    shared: Arc<Shared>,
    report: ShardReport,
    connecting: usize,
    next_connect: u32,
    /// Whether completed requests are followed by new ones (closed loop).
    issuing: bool,
    window: Option<Window>,
    /// Requests issued on open connections and not yet answered (those of a connection
    /// that closed stay in its stream and are counted as unanswered at the end).
    outstanding: usize,
    /// The current second of the window and its histogram, for `--hlog`.
    interval: (u64, Histogram<u64>),
    waiting_bufs: Vec<u32>,
    /// Redis: send buffers done with, for the next sends.
    spare: Vec<Vec<u8>>,
}

impl LoadShard {
    /// Builds the ring on the calling thread (its single issuer).
    pub fn new(mut plan: ShardPlan, shared: Arc<Shared>) -> io::Result<Self> {
        let mut ring = Ring::new(&RingConfig {
            sq_entries: uring::SQ_ENTRIES,
            cq_entries: uring::CQ_ENTRIES,
            fixed_files: plan.conns.max(1),
            bufs: Some((plan.bufs, plan.buf_size)),
            batch_usec: plan.batch_usec,
            notify: None,
        })?;
        if !plan.sources.is_empty() {
            ring.require(Need::Bind, "--sources")?;
        }
        let dests = plan.addrs.iter().map(|a| ring.pin_addr(*a)).collect();
        let sources = plan.sources.iter().map(|a| ring.pin_addr(*a)).collect();
        let region = ring.pin_region(std::mem::take(&mut plan.pattern));
        let now = Instant::now();
        let clients = (0..plan.conns)
            .map(|slot| Client {
                state: State::Closed,
                installed: false,
                recv_armed: false,
                sending: false,
                connect_started: now,
                stream: Stream::new(
                    plan.first_conn + u64::from(slot),
                    plan.size,
                    plan.kind.clone(),
                ),
            })
            .collect();
        Ok(LoadShard {
            ring,
            plan,
            dests,
            sources,
            region,
            clients,
            shared,
            report: ShardReport {
                established: 0,
                failed: 0,
                closed_by_peer: 0,
                requests: 0,
                errors: BTreeMap::new(),
                redis: RedisCounts::default(),
                latency_us: histogram(),
                uncorrected_us: histogram(),
                connect_us: histogram(),
            },
            connecting: 0,
            next_connect: 0,
            issuing: false,
            window: None,
            outstanding: 0,
            interval: (0, histogram()),
            waiting_bufs: Vec::new(),
            spare: Vec::new(),
        })
    }

    fn error(&mut self, kind: &str, n: u64) {
        *self.report.errors.entry(kind.to_string()).or_insert(0) += n;
    }

    fn aborted(&self) -> bool {
        self.shared.abort.load(Relaxed)
    }

    fn turn(&mut self, cqes: &mut Vec<Completion>, timeout: Duration) -> io::Result<()> {
        // As the server's shards do: no more completions than it holds connections.
        self.ring
            .submit_and_wait(Some(timeout), self.clients.len())?;
        self.ring.drain(cqes);
        for c in cqes.drain(..) {
            self.complete(c)?;
        }
        for slot in std::mem::take(&mut self.waiting_bufs) {
            if self.clients[slot as usize].state == State::Open {
                self.arm_recv(slot)?;
            }
        }
        Ok(())
    }

    pub fn run(mut self) -> io::Result<ShardReport> {
        let mut cqes = Vec::with_capacity(4096);
        self.connect_all(&mut cqes)?;
        // Wait for every shard to have connected, so that all connections are open at once.
        self.shared.ramped.fetch_add(1, Relaxed);
        while self.shared.ramped.load(Relaxed) < self.plan.shards && !self.aborted() {
            self.turn(&mut cqes, TICK)?;
        }
        self.run_workload(&mut cqes)?;
        // Close.
        let unanswered: u64 = self
            .clients
            .iter()
            .map(|c| c.stream.outstanding() as u64)
            .sum();
        if unanswered > 0 {
            self.error("unanswered_at_end", unanswered);
        }
        for slot in 0..self.plan.conns {
            self.close(slot)?;
        }
        while self.ring.in_flight() > 0 {
            self.turn(&mut cqes, TICK)?;
        }
        self.flush_interval();
        Ok(self.report)
    }

    fn connect_all(&mut self, cqes: &mut Vec<Completion>) -> io::Result<()> {
        let start = Instant::now();
        while (self.next_connect < self.plan.conns || self.connecting > 0) && !self.aborted() {
            let allowed = match self.plan.connect_rate {
                Some(rate) => ((start.elapsed().as_secs_f64() * rate) as u64 + 1)
                    .min(u64::from(self.plan.conns)) as u32,
                None => self.plan.conns,
            };
            while self.connecting < self.plan.connect_inflight && self.next_connect < allowed {
                self.connect(self.next_connect)?;
                self.next_connect += 1;
            }
            let wait = match self.plan.connect_rate {
                Some(rate) if self.next_connect < self.plan.conns => {
                    let next_at =
                        start + Duration::from_secs_f64(f64::from(self.next_connect) / rate);
                    next_at
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_micros(50), TICK)
                }
                _ => TICK,
            };
            self.turn(cqes, wait)?;
        }
        Ok(())
    }

    fn run_workload(&mut self, cqes: &mut Vec<Completion>) -> io::Result<()> {
        let open: Vec<u32> = (0..self.plan.conns)
            .filter(|s| self.clients[*s as usize].state == State::Open)
            .collect();
        let start = Instant::now();
        let counted = self.plan.requests.is_some();
        let from = if counted {
            start
        } else {
            start + self.plan.warmup
        };
        // A counted run (--requests) ends when all are answered, or at --duration at most.
        let until = from + self.plan.duration;
        self.window = Some(Window { from, until });
        self.issuing = true;
        match self.plan.workload {
            Workload::Closed { .. } => {
                for &slot in &open {
                    self.refill(slot, start)?;
                }
                while !self.aborted() {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    if counted && self.outstanding == 0 {
                        break;
                    }
                    self.turn(cqes, (until - now).min(TICK))?;
                }
            }
            Workload::Open { rate } => {
                let mut n: u64 = 0;
                while !self.aborted() && !open.is_empty() {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    let mut due = start + Duration::from_secs_f64(n as f64 / rate);
                    while due <= now && due < until {
                        let slot = open[(n % open.len() as u64) as usize];
                        if self.clients[slot as usize].state == State::Open {
                            self.issue(slot, due);
                            self.try_send(slot)?;
                        }
                        n += 1;
                        due = start + Duration::from_secs_f64(n as f64 / rate);
                    }
                    // With batched waits, wake no more often than the batch window and send
                    // everything due by then at once (their due times still count).
                    let floor = Duration::from_micros(u64::from(self.plan.batch_usec).max(20));
                    let wait = due.min(until).saturating_duration_since(now);
                    self.turn(cqes, wait.clamp(floor, TICK))?;
                }
            }
        }
        // No new requests; those outstanding get a grace period to come back.
        self.issuing = false;
        let grace_end = Instant::now() + END_GRACE;
        while self.outstanding > 0 && !self.aborted() {
            let now = Instant::now();
            if now >= grace_end {
                break;
            }
            self.turn(cqes, (grace_end - now).min(TICK))?;
        }
        Ok(())
    }

    /// Issues a request due at `intended` on `slot` (if the per-connection count allows);
    /// `try_send` sends it.
    fn issue(&mut self, slot: u32, intended: Instant) -> bool {
        let c = &mut self.clients[slot as usize];
        if let Some(limit) = self.plan.requests
            && c.stream.issued() >= limit
        {
            return false;
        }
        c.stream.issue(intended);
        self.outstanding += 1;
        true
    }

    /// Closed loop: issues whole batches on `slot` until `depth` of them are outstanding.
    fn refill(&mut self, slot: u32, now: Instant) -> io::Result<()> {
        let Workload::Closed { depth, pipeline } = self.plan.workload else {
            return Ok(());
        };
        let (depth, pipeline) = (depth as usize, pipeline as usize);
        'batches: while self.clients[slot as usize].stream.outstanding() + pipeline
            <= depth * pipeline
        {
            for _ in 0..pipeline {
                if !self.issue(slot, now) {
                    break 'batches;
                }
            }
        }
        self.try_send(slot)
    }

    fn try_send(&mut self, slot: u32) -> io::Result<()> {
        let c = &mut self.clients[slot as usize];
        if c.state != State::Open {
            return Ok(());
        }
        let Some(send) = c.stream.next_send(Instant::now(), &mut self.spare) else {
            return Ok(());
        };
        c.sending = true;
        let ud = ud(Kind::Send, slot);
        match send {
            Send::Region { off, len } => self.ring.send_region(slot, self.region, off, len, ud),
            Send::Bytes { data, start } => self.ring.send_vec(slot, data, start, ud),
        }
    }

    fn connect(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.plan.first_conn + u64::from(slot);
        let ports = self.dests.len() as u64;
        let dest = self.dests[(conn % ports) as usize];
        let source = (!self.sources.is_empty())
            .then(|| self.sources[(conn / ports % self.sources.len() as u64) as usize]);
        let c = &mut self.clients[slot as usize];
        c.state = State::Connecting;
        c.connect_started = Instant::now();
        self.connecting += 1;
        let steps = ConnectSteps {
            socket: ud(Kind::Socket, slot),
            sockopt: ud(Kind::SockOpt, slot),
            bind: ud(Kind::Bind, slot),
            connect: ud(Kind::Connect, slot),
        };
        self.ring.socket_connect(slot, source, dest, &steps)
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        self.clients[slot as usize].recv_armed = true;
        self.ring.recv_multishot(slot, ud(Kind::Recv, slot))
    }

    /// Closes the connection in `slot` (once); its operations end with -ECANCELED.
    fn close(&mut self, slot: u32) -> io::Result<()> {
        let c = &mut self.clients[slot as usize];
        let was = std::mem::replace(&mut c.state, State::Closed);
        if was == State::Open {
            self.outstanding -= c.stream.outstanding();
        }
        if was == State::Connecting {
            // A connect that would otherwise run through its SYN retries; its completion
            // (and, if the SOCKET lands after this, the close) still come.
            let cancel = ud(Kind::Cancel, slot);
            self.ring.cancel(ud(Kind::Connect, slot), cancel)?;
        }
        if !c.installed {
            return Ok(());
        }
        c.installed = false;
        let (recv_armed, sending) = (c.recv_armed, c.sending);
        let cancel = ud(Kind::Cancel, slot);
        if recv_armed {
            self.ring.cancel(ud(Kind::Recv, slot), cancel)?;
        }
        if sending {
            self.ring.cancel(ud(Kind::Send, slot), cancel)?;
        }
        self.ring.close_fixed(slot, ud(Kind::Close, slot))
    }

    fn complete(&mut self, mut c: Completion) -> io::Result<()> {
        let slot = c.ud.slot;
        let i = slot as usize;
        match c.ud.kind {
            Kind::Socket => {
                if c.res >= 0 {
                    self.clients[i].installed = true;
                    if self.clients[i].state == State::Closed {
                        // Closed while its SOCKET was in flight: close the new socket too.
                        self.close(slot)?;
                    }
                } else {
                    self.error(&format!("socket:{}", errno_name(c.res)), 1);
                }
            }
            Kind::SockOpt | Kind::Bind => {
                if c.res < 0 && c.res != -libc::ECANCELED {
                    let step = if c.ud.kind == Kind::Bind {
                        "bind"
                    } else {
                        "setsockopt"
                    };
                    self.error(&format!("{step}:{}", errno_name(c.res)), 1);
                }
            }
            Kind::Connect => {
                self.connecting -= 1;
                if c.res == 0 && self.clients[i].state == State::Connecting {
                    self.clients[i].state = State::Open;
                    let us = micros(self.clients[i].connect_started.elapsed());
                    let _ = self.report.connect_us.record(us);
                    self.report.established += 1;
                    self.shared.established.fetch_add(1, Relaxed);
                    self.arm_recv(slot)?;
                } else {
                    self.report.failed += 1;
                    self.shared.failed.fetch_add(1, Relaxed);
                    if c.res != -libc::ECANCELED {
                        self.error(&format!("connect:{}", errno_name(c.res)), 1);
                    }
                    self.close(slot)?;
                }
            }
            Kind::Send => {
                self.clients[i].sending = false;
                if self.clients[i].state != State::Open {
                    return Ok(());
                }
                let bytes = c.vec.take();
                match self.clients[i]
                    .stream
                    .on_sent(c.res, bytes, &mut self.spare)
                {
                    Ok(()) => self.try_send(slot)?,
                    Err(fault) => self.fault(slot, fault)?,
                }
            }
            Kind::Recv => self.on_recv(&c)?,
            Kind::Cancel | Kind::Close => {}
        }
        Ok(())
    }

    fn fault(&mut self, slot: u32, fault: Fault) -> io::Result<()> {
        match fault {
            Fault::Mismatch => self.error("verify_mismatch", 1),
            Fault::HttpStatus(status) => self.error(&format!("http_status:{status}"), 1),
            Fault::HttpBody => self.error("http_body_mismatch", 1),
            Fault::HttpMalformed => self.error("http_malformed", 1),
            Fault::RedisError(prefix) => self.error(&format!("redis_error:{prefix}"), 1),
            Fault::RedisUnexpected(verb) => {
                let verb = match verb {
                    Verb::Set => "set",
                    Verb::Get => "get",
                };
                self.error(&format!("redis_unexpected_reply:{verb}"), 1)
            }
            Fault::SendFailed(0) => self.error("send:sent_nothing", 1),
            Fault::SendFailed(res) => self.error(&format!("send:{}", errno_name(res)), 1),
        }
        self.close(slot)
    }

    fn on_recv(&mut self, c: &Completion) -> io::Result<()> {
        let slot = c.ud.slot;
        let i = slot as usize;
        if !c.more() {
            self.clients[i].recv_armed = false;
        }
        let Some(bid) = c.buffer() else {
            if self.clients[i].state != State::Open {
                return Ok(());
            }
            match -c.res {
                libc::ENOBUFS => {
                    self.waiting_bufs.push(slot);
                    return Ok(());
                }
                0 => {
                    self.report.closed_by_peer += 1;
                    if self.clients[i].stream.outstanding() > 0 {
                        self.error("closed_mid_request", 1);
                    }
                }
                _ => self.error(&format!("recv:{}", errno_name(c.res)), 1),
            }
            return self.close(slot);
        };
        self.ring.bufs_mut().taken(bid);
        let len = c.res.max(0) as u32;
        let mut verdict = Ok(());
        let mut done = Vec::new();
        let before = self.clients[i].stream.outstanding();
        if self.clients[i].state == State::Open {
            let data = self.ring.bufs().bytes(bid, len);
            let pattern = self.ring.region(self.region);
            verdict = self.clients[i]
                .stream
                .on_data(data, pattern, |d| done.push(d));
        }
        self.ring.bufs_mut().recycle(bid);
        let now = Instant::now();
        // Answered, rightly or (HTTP) wrongly: no longer outstanding.
        self.outstanding -= before - self.clients[i].stream.outstanding();
        let answered = !done.is_empty();
        for d in done {
            self.record(d, now);
        }
        if answered && self.issuing && self.clients[i].state == State::Open {
            self.refill(slot, now)?;
        }
        if let Err(fault) = verdict {
            return self.fault(slot, fault);
        }
        if !c.more() && self.clients[i].state == State::Open {
            self.arm_recv(slot)?;
        }
        Ok(())
    }

    fn record(&mut self, d: Completed, now: Instant) {
        self.shared.requests.fetch_add(1, Relaxed);
        let Some(w) = self.window else { return };
        if d.intended < w.from || d.intended >= w.until {
            return;
        }
        self.report.requests += 1;
        let r = &mut self.report.redis;
        match d.reply {
            Some(Reply::Stored) => r.sets += 1,
            Some(Reply::Hit) => (r.gets, r.hits) = (r.gets + 1, r.hits + 1),
            Some(Reply::Miss) => (r.gets, r.misses) = (r.gets + 1, r.misses + 1),
            Some(Reply::Error(_)) | None => {}
        }
        let corrected = micros(now - d.intended);
        let _ = self.report.latency_us.record(corrected);
        let _ = self.report.uncorrected_us.record(micros(now - d.sent_at));
        if self.plan.intervals.is_some() {
            let second = now.saturating_duration_since(w.from).as_secs();
            if second != self.interval.0 {
                self.flush_interval();
                self.interval.0 = second;
            }
            let _ = self.interval.1.record(corrected);
        }
    }

    /// Sends the current second's histogram to the `--hlog` writer, if it has any count.
    fn flush_interval(&mut self) {
        if let Some(tx) = &self.plan.intervals
            && !self.interval.1.is_empty()
        {
            let h = std::mem::replace(&mut self.interval.1, histogram());
            let _ = tx.send((self.interval.0, h));
        }
    }
}
