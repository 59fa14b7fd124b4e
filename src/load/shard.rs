//! One load-generator shard: a pinned thread with its own ring whose connections are direct
//! descriptors in chosen slots (SOCKET linked to CONNECT), so the process needs no fd per
//! connection. Phases: connect every connection (a bounded number in flight), wait for every
//! shard to get there, run the request loop, then close everything and wait for the ring to
//! go quiet.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::conn::{Next, Request};
use crate::proactor::ring::{Completion, Kind, Ring, RingConfig, UserData};

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

pub struct ShardPlan {
    /// Global index of this shard's first connection.
    pub first_conn: u64,
    pub conns: u32,
    pub shards: usize,
    /// Pinned server addresses; connection i goes to `addrs[i % addrs.len()]`.
    pub addrs: Vec<std::net::SocketAddrV4>,
    pub size: usize,
    pub pattern: Box<[u8]>,
    pub duration: Duration,
    /// Requests per connection, when the run is counted rather than timed.
    pub requests: Option<u64>,
    pub connect_inflight: usize,
    pub bufs: u16,
    pub buf_size: u32,
}

/// What one shard measured.
pub struct ShardReport {
    pub established: u64,
    pub failed: u64,
    pub closed_by_peer: u64,
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Histogram<u64>,
    pub connect_us: Histogram<u64>,
    pub run_secs: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
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
    seq: u64,
    req: Option<Request>,
    started: Instant,
}

pub struct LoadShard {
    ring: Ring,
    plan: ShardPlan,
    pins: Vec<usize>,
    region: usize,
    clients: Vec<Client>,
    shared: Arc<Shared>,
    report: ShardReport,
    connecting: usize,
    next_connect: u32,
    running: bool,
    /// Requests sent and not yet fully echoed.
    outstanding: usize,
    waiting_bufs: Vec<u32>,
}

/// After the run's duration, how long requests already sent may take to come back before
/// their connections are closed anyway (they are then not counted).
const END_GRACE: Duration = Duration::from_secs(2);

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn errno_name(res: i32) -> String {
    io::Error::from_raw_os_error(-res)
        .kind()
        .to_string()
        .replace(' ', "_")
}

impl LoadShard {
    /// Builds the ring on the calling thread (its single issuer).
    pub fn new(mut plan: ShardPlan, shared: Arc<Shared>) -> io::Result<Self> {
        let mut ring = Ring::new(&RingConfig {
            sq_entries: 4096,
            cq_entries: 16384,
            fixed_files: plan.conns.max(1),
            bufs: Some((plan.bufs, plan.buf_size)),
        })?;
        let pins = plan.addrs.iter().map(|a| ring.pin_addr(*a)).collect();
        let region = ring.pin_region(std::mem::take(&mut plan.pattern));
        let now = Instant::now();
        let clients = (0..plan.conns)
            .map(|_| Client {
                state: State::Idle,
                installed: false,
                recv_armed: false,
                sending: false,
                seq: 0,
                req: None,
                started: now,
            })
            .collect();
        Ok(LoadShard {
            ring,
            plan,
            pins,
            region,
            clients,
            shared,
            report: ShardReport {
                established: 0,
                failed: 0,
                closed_by_peer: 0,
                requests: 0,
                errors: BTreeMap::new(),
                latency_us: hist(),
                connect_us: hist(),
                run_secs: 0.0,
            },
            connecting: 0,
            next_connect: 0,
            running: false,
            outstanding: 0,
            waiting_bufs: Vec::new(),
        })
    }

    fn error(&mut self, kind: &str) {
        *self.report.errors.entry(kind.to_string()).or_insert(0) += 1;
    }

    fn turn(&mut self, cqes: &mut Vec<Completion>, timeout: Duration) -> io::Result<()> {
        self.ring.submit_and_wait(Some(timeout))?;
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
        let tick = Duration::from_millis(20);
        // Connect.
        while (self.next_connect < self.plan.conns || self.connecting > 0)
            && !self.shared.abort.load(Relaxed)
        {
            while self.connecting < self.plan.connect_inflight
                && self.next_connect < self.plan.conns
            {
                self.connect(self.next_connect)?;
                self.next_connect += 1;
            }
            self.turn(&mut cqes, tick)?;
        }
        // Wait for every shard to have connected, so that all connections are open at once.
        self.shared.ramped.fetch_add(1, Relaxed);
        while self.shared.ramped.load(Relaxed) < self.plan.shards
            && !self.shared.abort.load(Relaxed)
        {
            self.turn(&mut cqes, tick)?;
        }
        // Run.
        let start = Instant::now();
        let deadline = start + self.plan.duration;
        self.running = true;
        for slot in 0..self.plan.conns {
            if self.clients[slot as usize].state == State::Open {
                self.start_request(slot)?;
            }
        }
        while self.outstanding > 0 && !self.shared.abort.load(Relaxed) {
            let now = Instant::now();
            if self.running && self.plan.requests.is_none() && now >= deadline {
                // No new requests; those outstanding get a grace period to finish.
                self.running = false;
            }
            if !self.running && now >= deadline + END_GRACE {
                break;
            }
            let until = if self.running {
                deadline
            } else {
                deadline + END_GRACE
            };
            self.turn(
                &mut cqes,
                until
                    .saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), tick),
            )?;
        }
        self.running = false;
        // Up to the last echo, so requests finished in the grace period are not free.
        self.report.run_secs = start.elapsed().as_secs_f64();
        // Close.
        for slot in 0..self.plan.conns {
            self.close(slot)?;
        }
        while self.ring.in_flight() > 0 {
            self.turn(&mut cqes, tick)?;
        }
        Ok(self.report)
    }

    fn connect(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.plan.first_conn + u64::from(slot);
        let pin = self.pins[(conn % self.pins.len() as u64) as usize];
        let c = &mut self.clients[slot as usize];
        c.state = State::Connecting;
        c.started = Instant::now();
        self.connecting += 1;
        self.ring.socket_connect(
            slot,
            pin,
            UserData::new(Kind::Socket, slot, 0),
            UserData::new(Kind::Connect, slot, 0),
        )
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        self.clients[slot as usize].recv_armed = true;
        self.ring
            .recv_multishot(slot, UserData::new(Kind::Recv, slot, 0))
    }

    fn send(&mut self, slot: u32, off: usize, len: usize) -> io::Result<()> {
        self.clients[slot as usize].sending = true;
        self.ring.send_region(
            slot,
            self.region,
            off,
            len,
            UserData::new(Kind::SendRegion, slot, 0),
        )
    }

    fn start_request(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.plan.first_conn + u64::from(slot);
        let c = &mut self.clients[slot as usize];
        let req = Request::new(conn, c.seq, self.plan.size);
        let Next::Send { off, len } = req.start() else {
            unreachable!("a request starts with a send")
        };
        c.req = Some(req);
        c.started = Instant::now();
        self.outstanding += 1;
        self.send(slot, off, len)
    }

    /// Closes the connection in `slot` (once); its operations end with -ECANCELED.
    fn close(&mut self, slot: u32) -> io::Result<()> {
        let c = &mut self.clients[slot as usize];
        let was = c.state;
        c.state = State::Closed;
        if c.req.take().is_some() {
            self.outstanding -= 1;
        }
        if was == State::Closed || !c.installed {
            return Ok(());
        }
        c.installed = false;
        let (recv_armed, sending) = (c.recv_armed, c.sending);
        let cancel = UserData::new(Kind::Cancel, slot, 0);
        if recv_armed {
            self.ring
                .cancel(UserData::new(Kind::Recv, slot, 0), cancel)?;
        }
        if sending {
            self.ring
                .cancel(UserData::new(Kind::SendRegion, slot, 0), cancel)?;
        }
        self.ring
            .close_fixed(slot, UserData::new(Kind::Close, slot, 0))
    }

    fn complete(&mut self, c: Completion) -> io::Result<()> {
        let slot = c.ud.slot;
        let i = slot as usize;
        match c.ud.kind {
            Kind::Socket => {
                if c.res >= 0 {
                    self.clients[i].installed = true;
                } else {
                    self.error(&format!("socket:{}", errno_name(c.res)));
                }
            }
            Kind::Connect => {
                self.connecting -= 1;
                if c.res == 0 && self.clients[i].state == State::Connecting {
                    self.clients[i].state = State::Open;
                    let us = self.clients[i].started.elapsed().as_micros() as u64;
                    let _ = self.report.connect_us.record(us.max(1));
                    self.report.established += 1;
                    self.shared.established.fetch_add(1, Relaxed);
                    self.arm_recv(slot)?;
                } else {
                    self.report.failed += 1;
                    self.shared.failed.fetch_add(1, Relaxed);
                    if c.res != -libc::ECANCELED {
                        self.error(&format!("connect:{}", errno_name(c.res)));
                    }
                    self.close(slot)?;
                }
            }
            Kind::SendRegion => {
                self.clients[i].sending = false;
                if self.clients[i].state != State::Open {
                    return Ok(());
                }
                let Some(req) = self.clients[i].req.as_mut() else {
                    return Ok(());
                };
                match req.on_sent(c.res) {
                    Next::Send { off, len } => self.send(slot, off, len)?,
                    Next::Broken => {
                        let why = if c.res < 0 {
                            errno_name(c.res)
                        } else {
                            "sent_nothing".into()
                        };
                        self.error(&format!("send:{why}"));
                        self.close(slot)?;
                    }
                    _ => {}
                }
            }
            Kind::Recv => self.on_recv(&c)?,
            Kind::Cancel | Kind::Close => {}
            Kind::Accept | Kind::SendBuf | Kind::SendVec | Kind::Wake => {
                debug_assert!(false, "the load generator never submits {:?}", c.ud.kind);
            }
        }
        Ok(())
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
                    if self.clients[i].req.is_some() {
                        self.error("closed_mid_request");
                    }
                }
                _ => self.error(&format!("recv:{}", errno_name(c.res))),
            }
            return self.close(slot);
        };
        self.ring.bufs_mut().taken(bid);
        let len = c.res.max(0) as u32;
        let open = self.clients[i].state == State::Open;
        let verdict = match self.clients[i].req.as_mut() {
            Some(req) if open => {
                let data = self.ring.bufs().bytes(bid, len);
                Some(req.on_data(data, self.ring.region(self.region)))
            }
            // Bytes with no request outstanding are not an echo of anything we sent.
            _ if open && len > 0 => Some(Next::Mismatch),
            _ => None,
        };
        self.ring.bufs_mut().recycle(bid);
        match verdict {
            Some(Next::Done) => {
                let us = self.clients[i].started.elapsed().as_micros() as u64;
                let _ = self.report.latency_us.record(us.max(1));
                self.report.requests += 1;
                self.shared.requests.fetch_add(1, Relaxed);
                let client = &mut self.clients[i];
                client.req = None;
                client.seq += 1;
                self.outstanding -= 1;
                let more_wanted = self.plan.requests.is_none_or(|n| client.seq < n);
                if self.running && more_wanted {
                    self.start_request(slot)?;
                }
            }
            Some(Next::Mismatch) => {
                self.error("verify_mismatch");
                return self.close(slot);
            }
            _ => {}
        }
        if !c.more() && self.clients[i].state == State::Open {
            self.arm_recv(slot)?;
        }
        Ok(())
    }
}
