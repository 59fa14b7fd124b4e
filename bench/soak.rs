//! Soak: both engines under load and connection churn, RSS sampled: `cargo bench --bench soak`
//!
//! Per engine (uring-server, then epoll-server), a fresh server pinned to the server CPU
//! serves `--proto http` on four ports for the whole run (30 minutes by default) while, from
//! the load CPU:
//! - `uring-load --proto http` holds 1,000 keep-alive connections and sends 20,000 GETs/s
//!   over them, open loop (latency from each request's schedule time);
//! - threads of this bench, each pinned to one load CPU in turn, churn connections at
//!   2,000/s in all: connect, `GET /plaintext`, read the whole answer with the load
//!   generator's check (`ResponseCheck`: 200, `Hello, World!`, Content-Length framed), close.
//!   Every 50th connection is instead reset (SO_LINGER 0) right after its request, and every
//!   50th sends garbage, which the server must answer 400 and close. Connection n goes from
//!   source 127.0.0.(1 + n % 8) to the (n / 8 % 4)th port, so each (source, port) pair gets
//!   1/32.
//!
//! Ephemeral ports: a normal churn connection is closed by the client first, so its tuple
//! sits in TIME_WAIT for 60 s: 2,000/s leaves about 120,000 of them, under
//! tcp_max_tw_buckets (131,072 here). Each socket binds its source with
//! IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect(2) against the whole 4-tuple: 8
//! sources × 4 server ports × 28,232 ports (ip_local_port_range 32768-60999) = 903,424
//! tuples. A plain bind to port 0 would hold a port per source across every destination
//! (8 × 28,232), and tcp_tw_reuse (2, loopback only, by default) only helps connect's pick.
//!
//! Sampled every --sample seconds: the server's VmRSS (from /proc/PID/status, its worker
//! processes included), its open fds and CPU, and the churn counts. Verdict "flat after
//! warm-up": warm-up is the first 10 % of the run (at least one sample); flat when the largest
//! RSS after warm-up exceeds the RSS at the end of warm-up by at most 10 % of it or 4 MiB,
//! whichever is larger. The least-squares slope over the post-warm-up samples is reported
//! too. The bench does not fail on the verdict; it records it.
//!
//! Per engine the run also records both clients' CPU (the load CPU can be the bottleneck
//! instead of the server) and, host-wide over the run, loopback packets dropped at a full CPU
//! backlog (/proc/net/softnet_stat) with the TCP retransmissions and timeouts they cause:
//! each costs a request 200 ms or more, so they explain latency outliers of that size.
//!
//! At the end the load stops by itself, the churn threads stop, the server gets SIGTERM (by
//! PID) and its `--stats-json` totals are read: accepted should equal closed, and both
//! should equal the connections the clients opened. Writes
//! bench/results/soak-<date>-<kernel>.md and .json (the samples in the .json).
//!
//! Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c1m::proto::http::{Answer, BODY, Malformed, ResponseCheck};
use c1m::sys;
use clap::Parser;
use serde_json::{Value, json};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

const REQUEST: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";
const GARBAGE: &[u8] = b"\x00\x01garbage\r\n\r\n";
/// One churn connection in this many is reset, and one in this many sends garbage.
const EVERY: u64 = 50;
/// Churn sources: 127.0.0.1 to 127.0.0.8, all local on lo.
const SOURCES: u8 = 8;
/// A churn connection's connect, write and read each give up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Error messages kept verbatim per engine; the rest are only counted.
const KEEP_ERRORS: usize = 8;
/// The most a churn connection reads before it calls the answer bad.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Parser, Debug)]
#[command(
    name = "soak",
    override_usage = "cargo bench --bench soak [-- OPTIONS]",
    about = "Both engines under load and connection churn, RSS sampled"
)]
struct Opts {
    /// Minutes per engine (a short trial: --minutes 1)
    #[arg(long, value_name = "M", default_value = "30", value_parser = common::positive)]
    minutes: f64,
    /// The engines, in this order
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "uring,epoll"
    )]
    engines: Vec<Engine>,
    /// Server ports (A-B or a comma list of ports and ranges)
    #[arg(long, value_name = "A-B", default_value = "7100-7103")]
    ports: Ports,
    /// uring-load's connections
    #[arg(long, value_name = "N", default_value = "1000", value_parser = clap::value_parser!(u64).range(1..))]
    conns: u64,
    /// uring-load's requests per second
    #[arg(long, value_name = "R", default_value = "20000", value_parser = common::positive)]
    rate: f64,
    /// Churn connections per second in all
    #[arg(long, value_name = "R", default_value = "2000", value_parser = common::positive)]
    churn_rate: f64,
    /// Churn threads (blocking: at 2,000/s each has 16 ms a connection)
    #[arg(long, value_name = "N", default_value = "32",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    churn_threads: usize,
    /// Seconds between RSS samples
    #[arg(long, value_name = "S", default_value = "10", value_parser = common::positive)]
    sample: f64,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
    /// The arguments as given, for the recorded command.
    #[arg(skip)]
    argv: String,
}

/// A port list as the servers take it (`A-B` or a comma list of ports and ranges): kept as
/// written, to pass on and record, and as the ports it names.
#[derive(Debug, Clone)]
struct Ports {
    spec: String,
    list: Vec<u16>,
}

impl FromStr for Ports {
    type Err = String;

    fn from_str(spec: &str) -> Result<Ports, String> {
        let bad = || format!("bad list `{spec}` (A-B or a comma list)");
        let mut list = Vec::new();
        for p in spec.split(',') {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            list.extend(a..=b);
        }
        if list.is_empty() {
            return Err(bad());
        }
        Ok(Ports {
            spec: spec.to_string(),
            list,
        })
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

fn opts() -> Opts {
    let (mut o, args) = common::parse::<Opts>(|c| c);
    o.argv = args.join(" ");
    o
}

#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
enum Engine {
    Uring,
    Epoll,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Epoll => "epoll",
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Engine::Uring => env!("CARGO_BIN_EXE_uring-server"),
            Engine::Epoll => env!("CARGO_BIN_EXE_epoll-server"),
        }
    }
}

fn tmp(what: &str, engine: Engine) -> PathBuf {
    std::env::temp_dir().join(format!(
        "c1m-soak-{what}-{}-{}.json",
        engine.name(),
        std::process::id()
    ))
}

/// A server that is SIGKILLed (by its PID, and its worker processes by theirs) if the run
/// fails before stopping it.
struct Server(Option<common::Proc>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            if p.child.try_wait().ok().flatten().is_none() {
                // Its workers: the server has not been reaped, so its children are still its.
                for &w in &common::family(p.child.id())[1..] {
                    let _ = sys::kill(w, libc::SIGKILL);
                }
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// A client process that is killed (by its PID) if the run fails before it ends.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Why a churn connection failed: a short kind, counted, and the message.
struct Fail {
    kind: String,
    detail: String,
}

impl Fail {
    fn io(stage: &str, e: std::io::Error) -> Fail {
        let kind = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("{stage}:timeout")
            }
            k => format!("{stage}:{k:?}"),
        };
        Fail {
            kind,
            detail: format!("{stage}: {e}"),
        }
    }

    fn answer(kind: &str, buf: &[u8]) -> Fail {
        Fail {
            kind: kind.into(),
            detail: format!("{kind}: {:?}", String::from_utf8_lossy(buf)),
        }
    }
}

#[derive(Default)]
struct ChurnCounts {
    /// Connections whose connect succeeded (the server should have accepted each).
    connected: AtomicU64,
    /// Answered 200 `Hello, World!`, then closed by us.
    ok: AtomicU64,
    /// Reset by us right after the request.
    reset: AtomicU64,
    /// Sent garbage, answered 400 and closed by the server.
    garbage: AtomicU64,
    failed: AtomicU64,
    /// Times a thread fell over a second behind its schedule and dropped the backlog.
    behind: AtomicU64,
}

impl ChurnCounts {
    fn done(&self) -> u64 {
        self.ok.load(Relaxed) + self.reset.load(Relaxed) + self.garbage.load(Relaxed)
    }
}

/// Failed churn connections by kind, and the first few messages.
#[derive(Default)]
struct Failures {
    by_kind: BTreeMap<String, u64>,
    first: Vec<String>,
}

/// The churn threads; dropped, they are told to stop and joined.
struct Churn {
    counts: Arc<ChurnCounts>,
    failures: Arc<Mutex<Failures>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Reset,
    Garbage,
}

impl Churn {
    /// Starts the threads; each stops at `until` or when told.
    fn start(o: &Opts, until: Instant) -> Churn {
        let counts = Arc::new(ChurnCounts::default());
        let failures = Arc::new(Mutex::new(Failures::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let next_n = Arc::new(AtomicU64::new(0));
        let interval = Duration::from_secs_f64(o.churn_threads as f64 / o.churn_rate);
        let start = Instant::now();
        let threads = (0..o.churn_threads)
            .map(|i| {
                let (counts, failures, stop, next_n) = (
                    counts.clone(),
                    failures.clone(),
                    stop.clone(),
                    next_n.clone(),
                );
                let ports = o.ports.list.clone();
                let cpus = o.cpus.load_cpus.cpus();
                let cpu = cpus[i % cpus.len()];
                // Threads start spread over one interval, so the connects are even.
                let mut due = start + interval.mul_f64(i as f64 / o.churn_threads as f64);
                std::thread::spawn(move || {
                    sys::pin_current_thread(cpu).expect("each load CPU was pinned to at start");
                    while !stop.load(Relaxed) {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        if due > now {
                            std::thread::sleep(due - now);
                        } else if now - due > Duration::from_secs(1) {
                            counts.behind.fetch_add(1, Relaxed);
                            due = now;
                        }
                        due += interval;
                        let n = next_n.fetch_add(1, Relaxed);
                        let src = Ipv4Addr::new(127, 0, 0, 1 + (n % u64::from(SOURCES)) as u8);
                        let port = ports[(n / u64::from(SOURCES)) as usize % ports.len()];
                        let kind = match n % EVERY {
                            25 => Kind::Reset,
                            49 => Kind::Garbage,
                            _ => Kind::Get,
                        };
                        let r = one(
                            src,
                            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
                            kind,
                            &counts,
                        );
                        match (r, kind) {
                            (Ok(()), Kind::Get) => counts.ok.fetch_add(1, Relaxed),
                            (Ok(()), Kind::Reset) => counts.reset.fetch_add(1, Relaxed),
                            (Ok(()), Kind::Garbage) => counts.garbage.fetch_add(1, Relaxed),
                            (Err(f), _) => {
                                let mut fl = failures.lock().unwrap();
                                *fl.by_kind.entry(f.kind).or_insert(0) += 1;
                                if fl.first.len() < KEEP_ERRORS {
                                    fl.first.push(format!("{src} -> :{port}: {}", f.detail));
                                }
                                counts.failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Churn {
            counts,
            failures,
            stop,
            threads,
        }
    }

    fn finish(mut self) -> Failures {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.failures.lock().unwrap())
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A socket bound to `src` whose port connect(2) picks against the whole 4-tuple.
fn churn_socket(src: Ipv4Addr) -> Result<Socket, Fail> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| Fail::io("socket", e))?;
    c1m::sys::set_bind_address_no_port(s.as_raw_fd()).map_err(|e| Fail::io("setsockopt", e))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))
        .map_err(|e| Fail::io("bind", e))?;
    Ok(s)
}

/// One churn connection, start to close.
fn one(src: Ipv4Addr, dst: SocketAddrV4, kind: Kind, counts: &ChurnCounts) -> Result<(), Fail> {
    let s = churn_socket(src)?;
    s.connect_timeout(&dst.into(), IO_TIMEOUT)
        .map_err(|e| Fail::io("connect", e))?;
    counts.connected.fetch_add(1, Relaxed);
    let mut s: TcpStream = s.into();
    let set = |s: &TcpStream| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))
    };
    set(&s).map_err(|e| Fail::io("setsockopt", e))?;
    match kind {
        Kind::Get => {
            s.write_all(REQUEST).map_err(|e| Fail::io("write", e))?;
            let mut raw = Vec::new();
            match read_answer(&mut s, BODY, &mut raw) {
                Ok(a) if a.status == 200 && a.body_ok => Ok(()),
                Ok(_) | Err(Unframed::Malformed) => Err(Fail::answer("bad_answer", &raw)),
                Err(Unframed::TooLong) => Err(Fail::answer("bad_answer", &raw[..256])),
                Err(Unframed::Eof) => Err(Fail::answer("read:early_eof", &raw)),
                Err(Unframed::Io(e)) => Err(Fail::io("read", e)),
            }
        }
        Kind::Reset => {
            s.write_all(REQUEST).map_err(|e| Fail::io("write", e))?;
            // SO_LINGER 0: close(2) sends RST and drops whatever is queued.
            SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| Fail::io("setsockopt", e))?;
            Ok(())
        }
        Kind::Garbage => {
            s.write_all(GARBAGE).map_err(|e| Fail::io("write", e))?;
            // The server answers 400 (no body) and closes: read the answer, then to its FIN.
            let mut raw = Vec::new();
            match read_answer(&mut s, b"", &mut raw) {
                Ok(a) if a.status == 400 => {}
                Ok(_) | Err(Unframed::Eof | Unframed::Malformed) => {
                    return Err(Fail::answer("garbage:not_400", &raw));
                }
                Err(Unframed::TooLong) => return Err(Fail::answer("garbage:too_long", &raw)),
                Err(Unframed::Io(e)) => return Err(Fail::io("garbage:read", e)),
            }
            let mut chunk = [0u8; 1024];
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) if raw.len() + n <= MAX_ANSWER => raw.extend_from_slice(&chunk[..n]),
                    Ok(_) => return Err(Fail::answer("garbage:too_long", &raw)),
                    Err(e) => return Err(Fail::io("garbage:after_400", e)),
                }
            }
        }
    }
}

/// How reading an answer ended before the check framed one.
enum Unframed {
    Eof,
    /// Not an answer the load generator's check can frame.
    Malformed,
    /// Over `MAX_ANSWER` bytes without one.
    TooLong,
    Io(std::io::Error),
}

/// Reads until the load generator's answer check frames one answer (its body compared with
/// `expected`), every byte read appended to `raw`.
fn read_answer(s: &mut TcpStream, expected: &[u8], raw: &mut Vec<u8>) -> Result<Answer, Unframed> {
    let mut check = ResponseCheck::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).map_err(Unframed::Io)?;
        if n == 0 {
            return Err(Unframed::Eof);
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(Unframed::TooLong);
        }
        let mut answer = None;
        check
            .on_input(&chunk[..n], expected, |a| answer = answer.or(Some(a)))
            .map_err(|Malformed| Unframed::Malformed)?;
        if let Some(a) = answer {
            return Ok(a);
        }
    }
}

/// One look at the server.
struct Sample {
    t: f64,
    rss_kb: u64,
    fds: usize,
    cpu_s: f64,
    churn_done: u64,
    churn_failed: u64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "t_s": (self.t * 10.0).round() / 10.0, "rss_kb": self.rss_kb, "fds": self.fds,
            "cpu_s": (self.cpu_s * 100.0).round() / 100.0,
            "churn_done": self.churn_done, "churn_failed": self.churn_failed,
        })
    }
}

fn rss_kb(pids: &[u32]) -> u64 {
    common::status_sum(pids, "VmRSS:", false)
}

fn cpu_s(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|&p| common::cpu_of(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// "Flat after warm-up", from the samples taken under load.
fn verdict(samples: &[Sample], duration: f64) -> Value {
    let warm_s = duration * 0.1;
    let warm_n = samples
        .iter()
        .take_while(|s| s.t <= warm_s + 1e-6)
        .count()
        .max(1)
        .min(samples.len());
    let Some(end_of_warmup) = warm_n.checked_sub(1).map(|i| &samples[i]) else {
        return json!({ "flat": null, "why": "no samples" });
    };
    let rss_warm = end_of_warmup.rss_kb;
    let post = &samples[warm_n..];
    let max_after = post.iter().map(|s| s.rss_kb).max();
    let allowance = (rss_warm / 10).max(4096);
    let growth = max_after.map(|m| m as i64 - rss_warm as i64);
    // Least squares of RSS (KiB) on time (minutes) over the post-warm-up samples.
    let slope = (post.len() >= 2).then(|| {
        let n = post.len() as f64;
        let mt = post.iter().map(|s| s.t / 60.0).sum::<f64>() / n;
        let mr = post.iter().map(|s| s.rss_kb as f64).sum::<f64>() / n;
        let sxy: f64 = post
            .iter()
            .map(|s| (s.t / 60.0 - mt) * (s.rss_kb as f64 - mr))
            .sum();
        let sxx: f64 = post.iter().map(|s| (s.t / 60.0 - mt).powi(2)).sum();
        sxy / sxx
    });
    json!({
        "warmup_s": warm_s, "warmup_samples": warm_n,
        "warmup_end_t_s": (end_of_warmup.t * 10.0).round() / 10.0,
        "post_warmup_samples": post.len(),
        "rss_warmup_kb": rss_warm, "rss_max_after_warmup_kb": max_after,
        "rss_final_kb": samples.last().map(|s| s.rss_kb),
        "growth_kb": growth, "allowance_kb": allowance,
        "slope_kib_per_min": slope.map(|s| (s * 100.0).round() / 100.0),
        "flat": growth.map(|g| g <= allowance as i64),
    })
}

/// Host-wide (this network namespace's) counters that explain latency outliers on loopback:
/// packets dropped because a CPU's backlog queue (net.core.netdev_max_backlog) was full, and
/// the TCP retransmissions and timeouts that follow (200 ms RTO and up on lo).
fn net_counters() -> BTreeMap<&'static str, u64> {
    // /proc/net/snmp and /proc/net/netstat: a line of names, then a line of values.
    let table = |path: &str, prefix: &str| -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        match rows.as_slice() {
            [names, values, ..] => names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let tcp = table("/proc/net/snmp", "Tcp:");
    let ext = table("/proc/net/netstat", "TcpExt:");
    // softnet_stat: a line per CPU, hex; the second field counts backlog drops.
    let softnet_drops = std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum();
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    BTreeMap::from([
        ("softnet_drops", softnet_drops),
        ("tcp_retrans_segs", get(&tcp, "RetransSegs")),
        ("tcp_timeouts", get(&ext, "TCPTimeouts")),
        ("tcp_syn_retrans", get(&ext, "TCPSynRetrans")),
        ("listen_drops", get(&ext, "ListenDrops")),
    ])
}

/// Fails with the cause and the fix when a server port is taken (by another bench, say).
fn check_ports(o: &Opts) -> Result<(), String> {
    for &p in &o.ports.list {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            return Err(format!(
                "port {p} on 127.0.0.1 is not free ({e}); pick others with --ports A-B"
            ));
        }
    }
    Ok(())
}

/// One engine's soak.
fn soak(o: &Opts, engine: Engine) -> Result<Value, String> {
    let duration = o.minutes * 60.0;
    check_ports(o)?;
    let stats = tmp("stats", engine);
    let load_json = tmp("load", engine);
    let _ = std::fs::remove_file(&stats);
    let _ = std::fs::remove_file(&load_json);
    let cores = o.cpus.server_cpus.count().to_string();
    let server_args = [
        "--proto",
        "http",
        "--ports",
        o.ports.spec.as_str(),
        "--host",
        "127.0.0.1",
        "--cores",
        &cores,
        "--stats-json",
        stats.to_str().unwrap(),
    ];
    let server_cmd = format!(
        "taskset -c {} {} {}",
        o.cpus.server_cpus,
        engine.bin(),
        server_args.join(" ")
    );
    let mut server = Server(Some(common::Proc::server_on(
        o.cpus.server_cpus.as_str(),
        engine.bin(),
        &server_args,
    )));
    let pid = server.0.as_ref().unwrap().child.id();
    let pids = common::family(pid);
    let (rss_idle, fds_idle) = (rss_kb(&pids), common::fd_count(pid));

    let load_args: Vec<String> = [
        "--proto",
        "http",
        "--host",
        "127.0.0.1",
        "--ports",
        o.ports.spec.as_str(),
        "--conns",
        &o.conns.to_string(),
        "--rate",
        &o.rate.to_string(),
        "--cores",
        &o.cpus.load_cpus.count().to_string(),
        "--duration",
        &duration.to_string(),
        "--quiet",
        "--allow-partial",
        "--json",
        load_json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let load_cmd = format!(
        "taskset -c {} {} {}",
        o.cpus.load_cpus,
        env!("CARGO_BIN_EXE_uring-load"),
        load_args.join(" ")
    );
    let t0 = Instant::now();
    let mut load = Client(
        Command::new("taskset")
            .args([
                "-c",
                o.cpus.load_cpus.as_str(),
                env!("CARGO_BIN_EXE_uring-load"),
            ])
            .args(&load_args)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start uring-load: {e}"))?,
    );
    let bench_cpu0 = common::cpu_of(std::process::id());
    let net0 = net_counters();
    let churn = Churn::start(o, t0 + Duration::from_secs_f64(duration));

    let take = |t: f64, churn: &Churn| {
        let (u, s) = cpu_s(&pids);
        Sample {
            t,
            rss_kb: rss_kb(&pids),
            fds: common::fd_count(pid),
            cpu_s: u + s,
            churn_done: churn.counts.done(),
            churn_failed: churn.counts.failed.load(Relaxed),
        }
    };
    let mut samples = Vec::new();
    let mut load_ended_early = false;
    let n = (duration / o.sample).ceil() as usize;
    for i in 1..=n {
        let at = (i as f64 * o.sample).min(duration);
        let due = t0 + Duration::from_secs_f64(at);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let srv = &mut server.0.as_mut().unwrap().child;
        if let Some(st) = srv.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the server exited ({st}) after {:.0} s under load",
                t0.elapsed().as_secs_f64()
            ));
        }
        if !load_ended_early {
            if let Some(st) = load.0.try_wait().map_err(|e| e.to_string())? {
                load_ended_early = true;
                eprintln!(
                    "soak: warning: {}: uring-load ended early, at {:.0} s ({st})",
                    engine.name(),
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        let s = take(t0.elapsed().as_secs_f64(), &churn);
        eprintln!(
            "soak: {} t={:.0}s rss={} KiB fds={} cpu={:.1}s churn {} done, {} failed",
            engine.name(),
            s.t,
            s.rss_kb,
            s.fds,
            s.cpu_s,
            s.churn_done,
            s.churn_failed
        );
        samples.push(s);
    }

    // uring-load measures --duration once its connections are up, then closes them.
    let left = Duration::from_secs_f64(duration + 60.0).saturating_sub(t0.elapsed());
    let load_status = common::wait_bounded(&mut load.0, left, "uring-load")?;
    let counts = churn.counts.clone();
    let Failures {
        by_kind: failures,
        first: first_errors,
    } = churn.finish();
    let wall = t0.elapsed().as_secs_f64();
    let bench_cpu1 = common::cpu_of(std::process::id());
    let churn_cpu = bench_cpu1.0 - bench_cpu0.0 + bench_cpu1.1 - bench_cpu0.1;
    let net: BTreeMap<&str, u64> = net_counters()
        .into_iter()
        .map(|(k, v)| (k, v.saturating_sub(net0.get(k).copied().unwrap_or(0))))
        .collect();
    // A moment for the server to see the last closes before the idle look.
    std::thread::sleep(Duration::from_secs(1));
    let (rss_after, fds_after) = (rss_kb(&pids), common::fd_count(pid));
    let (user, sys) = cpu_s(&pids);
    let exit = server
        .0
        .take()
        .unwrap()
        .stop_within(Duration::from_secs(20))?;

    let text = std::fs::read_to_string(&load_json)
        .map_err(|e| format!("uring-load ({load_status}) wrote no report: {e}"))?;
    let _ = std::fs::remove_file(&load_json);
    let l: Value = serde_json::from_str(&text).map_err(|e| format!("uring-load json: {e}"))?;
    let text = std::fs::read_to_string(&stats)
        .map_err(|e| format!("{} ({exit}) wrote no stats: {e}", engine.name()))?;
    let _ = std::fs::remove_file(&stats);
    let s: Value = serde_json::from_str(&text).map_err(|e| format!("stats json: {e}"))?;
    let t = &s["totals"];
    let total = |k: &str| t[k].as_u64().unwrap_or(0);
    let connected = counts.connected.load(Relaxed);
    let opened = l["conns_established"].as_u64().unwrap_or(0) + connected;
    let load_errors: u64 = l["errors"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let churn_done = counts.done();
    Ok(json!({
        "engine": engine.name(),
        "server_cmd": server_cmd, "load_cmd": load_cmd,
        "duration_s": duration, "wall_s": wall,
        "rss_idle_kb": rss_idle, "fds_idle": fds_idle,
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "after_load": { "rss_kb": rss_after, "fds": fds_after },
        "verdict": verdict(&samples, duration),
        "churn": {
            "rate_target": o.churn_rate, "threads": o.churn_threads,
            "rate_achieved": churn_done as f64 / duration.min(wall),
            "connected": connected, "done": churn_done, "ok": counts.ok.load(Relaxed),
            "reset": counts.reset.load(Relaxed), "garbage": counts.garbage.load(Relaxed),
            "failed": counts.failed.load(Relaxed), "failures": failures,
            "first_errors": first_errors, "behind_resets": counts.behind.load(Relaxed),
            "cpu_s": churn_cpu,
        },
        "load": l, "load_errors": load_errors, "load_exit": load_status.to_string(),
        "host_net": net,
        "server": {
            "exit": exit.to_string(),
            "cpu_user_s": user, "cpu_sys_s": sys, "busy_pct": (user + sys) / wall * 100.0,
            "accepted": total("accepted"), "closed": total("closed"), "refused": total("refused"),
            "conn_errors": total("conn_errors"), "requests": total("requests"),
            "accepted_eq_closed": total("accepted") == total("closed"),
            "clients_opened": opened,
            "stats": s,
        },
    }))
}

fn main() {
    let o = opts();
    // Before pinning: available_parallelism counts only the CPUs a process may use.
    let machine = common::machine();
    // The churn threads (and this one, which samples) run on the load CPUs, beside
    // uring-load: each churn thread pins itself to one of them in turn. Every one is tried
    // here first, so no thread's pin can fail; this thread ends on the first.
    for &cpu in o.cpus.load_cpus.cpus().iter().rev() {
        if let Err(e) = sys::pin_current_thread(cpu) {
            eprintln!("soak: --load-cpus {}: CPU {cpu}: {e}", o.cpus.load_cpus);
            std::process::exit(1);
        }
    }
    let started = Instant::now();
    let mut runs = Vec::new();
    for &engine in &o.engines {
        eprintln!(
            "soak: {} for {} min: {} conns at {} req/s, churn {}/s on ports {}",
            engine.name(),
            o.minutes,
            o.conns,
            o.rate,
            o.churn_rate,
            o.ports
        );
        match soak(&o, engine) {
            Ok(r) => {
                eprintln!("soak: {}: {}", engine.name(), verdict_line(&r));
                runs.push(r);
            }
            Err(e) => {
                eprintln!("soak: {}: {e}", engine.name());
                std::process::exit(1);
            }
        }
    }
    write_results(&o, &machine, &runs, started.elapsed().as_secs_f64());
}

fn kib(v: &Value) -> String {
    v.as_i64().map_or("n/a".into(), |k| format!("{k} KiB"))
}

fn verdict_line(r: &Value) -> String {
    let v = &r["verdict"];
    let flat = match v["flat"].as_bool() {
        Some(true) => "flat after warm-up",
        Some(false) => "NOT flat after warm-up",
        None => "no verdict (no sample after warm-up)",
    };
    format!(
        "{flat}: RSS {} at the end of warm-up, max {} after it (growth {}, allowed {}), final {}, slope {}",
        kib(&v["rss_warmup_kb"]),
        kib(&v["rss_max_after_warmup_kb"]),
        kib(&v["growth_kb"]),
        kib(&v["allowance_kb"]),
        kib(&v["rss_final_kb"]),
        v["slope_kib_per_min"]
            .as_f64()
            .map_or("n/a".into(), |s| format!("{s:+.1} KiB/min")),
    )
}

fn write_results(o: &Opts, machine: &str, runs: &[Value], secs: f64) {
    let cmd = if o.argv.is_empty() {
        "cargo bench --bench soak".to_string()
    } else {
        format!("cargo bench --bench soak -- {}", o.argv)
    };
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: both engines under load and connection churn\n\n{date} · kernel {kernel} · commit {commit} · {} · {secs:.0} s\n\n`{cmd}`\n\n\
         Per engine, a fresh server (`--proto http --ports {} --host 127.0.0.1`) pinned to CPUs {} for {} min, while from CPUs {}: \
         `uring-load --proto http --conns {} --rate {}` (open loop, latency from each request's schedule time) and {} churn threads \
         of the bench at {}/s in all (connect from 127.0.0.1-8, `GET /plaintext`, read the answer, close; every {EVERY}th reset \
         with SO_LINGER 0 right after its request, every {EVERY}th sends garbage and must get 400). The server's VmRSS every {} s \
         (fds: /proc/PID/fd, where io_uring's direct descriptors do not show); \
         warm-up = the first 10 % of the run; flat = the largest RSS after warm-up exceeds the RSS at the end of warm-up by at \
         most max(10 % of it, 4 MiB); slope: least squares over the post-warm-up samples. Host counters are \
         the whole network namespace's over the run (other work included): loopback packets dropped at a full CPU \
         backlog are retransmitted after 200 ms or more, which is where latency outliers of that size come from.\n",
        machine,
        o.ports,
        o.cpus.server_cpus,
        o.minutes,
        o.cpus.load_cpus,
        o.conns,
        o.rate,
        o.churn_threads,
        o.churn_rate,
        o.sample,
    );
    for r in runs {
        let (v, c, l, s) = (&r["verdict"], &r["churn"], &r["load"], &r["server"]);
        let n = |x: &Value| x.as_u64().unwrap_or(0);
        let flat = match v["flat"].as_bool() {
            Some(true) => "**yes**",
            Some(false) => "**no**",
            None => "n/a (no sample after warm-up)",
        };
        let failures = c["failures"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                let kinds: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
                format!(" ({})", kinds.join(", "))
            })
            .unwrap_or_default();
        let load_cpu = l["client_cpu"]["user_s"].as_f64().unwrap_or(0.0)
            + l["client_cpu"]["sys_s"].as_f64().unwrap_or(0.0);
        let load_errors = l["errors"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| format!(" ({})", Value::Object(m.clone())))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "## {}-server\n\n| | |\n|---|---|\n\
             | duration | {:.0} s (wall {:.0} s) |\n\
             | churn connections done / failed | {} / {}{failures} |\n\
             | churn: answered 200 / reset / garbage answered 400 | {} / {} / {} ({:.0}/s achieved) |\n\
             | load connections established / failed | {} / {} |\n\
             | load requests / errors | {} / {}{load_errors} |\n\
             | load throughput | {:.0} req/s |\n\
             | load latency p50 / p99 / max | {} / {} / {} us |\n\
             | RSS idle before load | {} |\n\
             | RSS end of warm-up ({:.0} s) / max after / final | {} / {} / {} |\n\
             | RSS growth after warm-up (allowed) | {} ({}) |\n\
             | RSS slope after warm-up | {} |\n\
             | flat after warm-up | {flat} |\n\
             | RSS / fds once the load ended | {} / {} (idle: {} fds) |\n\
             | server accepted / closed | {} / {} ({}; {}) |\n\
             | server refused / conn errors / requests | {} / {} / {} |\n\
             | server CPU user / sys | {:.1} / {:.1} s ({:.0} % of one core) |\n\
             | client CPU uring-load / churn | {:.1} / {:.1} s ({:.0} % of the load CPUs) |\n\
             | host: backlog drops / TCP retransmits / timeouts / listen drops | {} / {} / {} / {} |\n",
            r["engine"].as_str().unwrap_or(""),
            r["duration_s"].as_f64().unwrap_or(0.0),
            r["wall_s"].as_f64().unwrap_or(0.0),
            n(&c["done"]),
            n(&c["failed"]),
            n(&c["ok"]),
            n(&c["reset"]),
            n(&c["garbage"]),
            c["rate_achieved"].as_f64().unwrap_or(0.0),
            n(&l["conns_established"]),
            n(&l["conns_failed"]),
            n(&l["requests"]),
            n(&r["load_errors"]),
            l["throughput_rps"].as_f64().unwrap_or(0.0),
            l["latency_us"]["p50"],
            l["latency_us"]["p99"],
            l["latency_us"]["max"],
            kib(&r["rss_idle_kb"]),
            v["warmup_end_t_s"].as_f64().unwrap_or(0.0),
            kib(&v["rss_warmup_kb"]),
            kib(&v["rss_max_after_warmup_kb"]),
            kib(&v["rss_final_kb"]),
            kib(&v["growth_kb"]),
            kib(&v["allowance_kb"]),
            v["slope_kib_per_min"]
                .as_f64()
                .map_or("n/a".into(), |s| format!("{s:+.1} KiB/min")),
            kib(&r["after_load"]["rss_kb"]),
            r["after_load"]["fds"],
            r["fds_idle"],
            n(&s["accepted"]),
            n(&s["closed"]),
            if s["accepted_eq_closed"] == true {
                "equal"
            } else {
                "NOT equal"
            },
            match n(&s["accepted"]) as i64 - n(&s["clients_opened"]) as i64 {
                0 => format!("the clients opened {}", n(&s["clients_opened"])),
                d => format!(
                    "the clients opened {}: {d:+} (another process on these ports?)",
                    n(&s["clients_opened"])
                ),
            },
            n(&s["refused"]),
            n(&s["conn_errors"]),
            n(&s["requests"]),
            s["cpu_user_s"].as_f64().unwrap_or(0.0),
            s["cpu_sys_s"].as_f64().unwrap_or(0.0),
            s["busy_pct"].as_f64().unwrap_or(0.0),
            load_cpu,
            c["cpu_s"].as_f64().unwrap_or(0.0),
            (load_cpu + c["cpu_s"].as_f64().unwrap_or(0.0))
                / (r["wall_s"].as_f64().unwrap_or(1.0) * o.cpus.load_cpus.count() as f64)
                * 100.0,
            n(&r["host_net"]["softnet_drops"]),
            n(&r["host_net"]["tcp_retrans_segs"]),
            n(&r["host_net"]["tcp_timeouts"]),
            n(&r["host_net"]["listen_drops"]),
        );
        // Ten points over the run, for a reader without the .json.
        let samples = r["samples"].as_array().cloned().unwrap_or_default();
        let step = samples.len().div_ceil(10).max(1);
        let points: Vec<String> = samples
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % step == 0 || i + 1 == samples.len())
            .map(|(_, p)| format!("{:.0} s: {}", p["t_s"].as_f64().unwrap_or(0.0), p["rss_kb"]))
            .collect();
        let _ = writeln!(md, "RSS (KiB) over the run: {}\n", points.join(", "));
        if let Some(errs) = c["first_errors"].as_array().filter(|e| !e.is_empty()) {
            let _ = writeln!(md, "First churn errors:\n");
            for e in errs {
                let _ = writeln!(md, "- `{}`", e.as_str().unwrap_or(""));
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(
            md,
            "Server: `{}`  \nLoad: `{}`\n",
            r["server_cmd"].as_str().unwrap_or(""),
            r["load_cmd"].as_str().unwrap_or("")
        );
    }
    println!("{md}");
    let base = format!("{}/soak-{date}-{kernel}", o.output.out);
    std::fs::create_dir_all(&o.output.out).unwrap();
    std::fs::write(format!("{base}.md"), &md).unwrap();
    let doc = json!({
        "bench": "soak", "date": date, "kernel": kernel, "commit": commit,
        "machine": machine,
        "command": cmd, "server_cpus": o.cpus.server_cpus.as_str(),
        "load_cpus": o.cpus.load_cpus.as_str(), "minutes": o.minutes,
        "ports": o.ports.spec, "conns": o.conns, "rate": o.rate, "churn_rate": o.churn_rate,
        "churn_threads": o.churn_threads, "sample_s": o.sample,
        "ip_local_port_range": std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_default().split_whitespace().collect::<Vec<_>>().join("-"),
        "runs": runs,
    });
    std::fs::write(
        format!("{base}.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("wrote {base}.md and .json");
}
