//! The fault suite: peers and events a server meets in the wild (a peer that never reads,
//! connection churn, HTTP garbage, SIGTERM under HTTP load, a client SIGKILLed with its
//! connections open), on real loopback sockets, each test body one case per engine
//! (`common::per_engine!`). Every check is exact except the latency ratio of the first test,
//! whose design is explained there.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Engine, Server, first_port, free_ports, load, random_bytes, u};
use socket2::{Domain, Protocol, Socket, Type};

/// The latency test measures, so it runs alone; the others check exact counts and may run
/// side by side.
static MEASURING: RwLock<()> = RwLock::new(());

fn alone() -> RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(|e| e.into_inner())
}

fn shared() -> RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(|e| e.into_inner())
}

fn port_list(ports: &str) -> Vec<u16> {
    ports.split(',').map(|p| p.parse().unwrap()).collect()
}

/// Polls `done` every 50 ms for up to `limit`; whether it came true.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// TCP sockets on 127.0.0.1 at one of `ports` that are neither listening nor closed nor in
/// TIME_WAIT: the server's connections as the kernel sees them, so including the io_uring
/// engine's fixed files (which /proc/PID/fd does not list) and connections still in an
/// accept queue. A connect picks no port a listener holds, so no client socket is counted.
///
/// Asked of sock_diag (netlink), which leaves TIME_WAIT out in the kernel: /proc/net/tcp
/// lists every TIME_WAIT socket, and after the churn test, with other jobs' on this
/// machine, that was 128,000 lines and 0.9 s a read.
fn server_side_sockets(ports: &[u16]) -> usize {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const HEADER: usize = 16; // struct nlmsghdr
    // TCP states (include/net/tcp_states.h): all but TIME_WAIT (6), CLOSE (7), LISTEN (10).
    let states: u32 = [1, 2, 3, 4, 5, 8, 9, 11, 12].iter().map(|s| 1 << s).sum();
    let mut req = Vec::with_capacity(HEADER + 56);
    req.extend_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // sequence, port id
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid (48).
    req.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0; 48]);
    let diag = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_SOCK_DIAG)),
    )
    .unwrap();
    // Unconnected, a netlink socket sends to the kernel (port id 0).
    assert_eq!(diag.send(&req).unwrap(), req.len());
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0;
    loop {
        let n = (&diag).read(&mut buf).unwrap();
        let mut at = 0;
        while at + HEADER <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            match kind {
                NLMSG_DONE => return count,
                NLMSG_ERROR => panic!("sock_diag: {:?}", &buf[at..at + len]),
                _ => {}
            }
            // struct inet_diag_msg: family, state, timer, retrans, then the sockid: source
            // port (big-endian) and address.
            let msg = &buf[at + HEADER..at + len];
            let port = u16::from_be_bytes([msg[4], msg[5]]);
            if msg[8..12] == [127, 0, 0, 1] && ports.contains(&port) {
                count += 1;
            }
            at += len.next_multiple_of(4);
        }
    }
}

/// A fresh connection is echoed.
fn echoes(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"still serving").unwrap();
    let mut back = [0u8; 13];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still serving");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User plus system CPU time of all of a process's threads, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised name, from field 3 (state): utime is 14, stime 15.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap()
}

/// A peer that writes 64 KiB chunks as fast as the socket takes them and never reads.
struct NonReadingPeer {
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    writer: JoinHandle<usize>,
}

impl NonReadingPeer {
    fn start(port: u16) -> NonReadingPeer {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A blocked write gives up after 100 ms (and says the peer is stalled), then looks at
        // `stop` and writes again.
        s.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let (stopping, stalling) = (stop.clone(), stalled.clone());
        let writer = thread::spawn(move || {
            let chunk = random_bytes(64 * 1024, 5);
            let mut sent = 0;
            while !stopping.load(Ordering::Relaxed) {
                match s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        stalling.store(true, Ordering::Relaxed);
                    }
                    Err(e) => panic!("the non-reading peer's write failed: {e}"),
                }
            }
            sent
        });
        NonReadingPeer {
            stop,
            stalled,
            writer,
        }
    }

    /// Whether a write has blocked for 100 ms: the server stopped reading, and the socket
    /// buffers between are full.
    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Stops writing and closes; returns the bytes written.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.writer.join().unwrap()
    }
}

/// Requests/s of each of a round's two simultaneous open-loop runs. Together, 10,000/s over
/// 2,000 connections took about 0.8 of this machine's 2 cores (each uring-load about 0.25,
/// each server 0.15), far from saturation; at 10,000/s each, other jobs on the machine
/// pushed rounds into it.
const RATE: &str = "5000";
/// Seconds measured in each run: 10,000 latencies, the p99 the 100th worst.
const ROUND_SECS: &str = "2";
/// Rounds judged per engine: the median of their p99 ratios is held to the bound.
const ROUNDS: usize = 3;
/// Rounds tried per engine before giving up (and failing): a few busy rounds are skipped.
const MAX_ROUNDS: usize = 10;
/// A baseline p99 above this says the machine decided the round, not the peer, and the
/// round is not judged. Here the baseline p99 was 0.2 to 4.5 ms whenever our processes got
/// the cores they asked for, and 10 ms to 2 s while another job's benchmark (pinned to one
/// of the two cores) held them. With no peer anywhere, 70 rounds of 2 s gave ratios of 0.53
/// to 1.51 in the 47 whose baseline p99 was under this, and of 0.13 to 11 in the others.
/// Only the baseline is looked at, so a peer that slows its own server is still judged.
const SATURATED_US: u64 = 5_000;

/// One round: the same open-loop run against `baseline` and `with_peer` at the same time,
/// while a peer that never reads writes to `with_peer`. Checks that both runs were clean;
/// returns their p99s.
fn paired_round(engine: Engine, baseline: &Server, with_peer: &Server) -> [u64; 2] {
    let peer = NonReadingPeer::start(first_port(&with_peer.ports));
    assert!(
        wait_until(Duration::from_secs(5), || peer.stalled()),
        "{engine:?}: the peer's writes never blocked: the server kept reading"
    );
    let runs = [baseline, with_peer].map(|s| {
        let ports = s.ports.clone();
        thread::spawn(move || {
            load(
                &ports,
                &["--conns", "1000", "--rate", RATE, "--duration", ROUND_SECS],
            )
        })
    });
    let reports = runs.map(|r| r.join().unwrap());
    peer.stop();
    for (code, r) in &reports {
        assert_eq!(*code, 0, "{engine:?}: {r}");
        assert_eq!(u(r, "conns_established"), 1000, "{engine:?}: {r}");
        assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    }
    reports.map(|(_, r)| u(&r, "latency_us.p99"))
}

/// How the comparison is kept honest on a noisy machine. Measured here (2 cores shared with
/// other jobs, among them a 20,000 requests/s benchmark pinned to one core), a run's p99
/// ranged from 0.12 ms to 2 s with no bad peer anywhere, back-to-back runs differed by up to
/// 35x, and four alternating pairs of 1 s runs, compared by their medians, gave ratios of
/// 0.17 to 2.3 with no peer in either (1.3 to 15 with one): whatever else the machine ran
/// decided the p99, so no baseline taken before or after can judge. So each round runs both at once,
/// against two servers of the same engine, the peer on one: both see the same machine. A
/// round whose baseline says the machine was saturated is not judged (`SATURATED_US`); the
/// median of three judged rounds' ratios is held to 2x, with no slack added. Over 19 runs of
/// this test here, the 100 judged rounds gave ratios of 0.54 to 1.64 (median 1.00), the 65
/// not judged 0.03 to 16. It fails when the peer's server is hurt: SIGSTOPping that server
/// for 5, 10 or 20 ms in every 500 ms (as a shard stuck on the peer would be) gave medians of
/// 2.45, 4.24 and 9.15.
///
/// The peer is stalled (the server has stopped reading it) before the runs start: what is
/// judged is the state the output cap promises. Getting there is a one-off burst: the
/// server reads and echoes about 4.2 MB first, as much as its socket's send buffer takes
/// (tcp_wmem's 4 MiB here), milliseconds of copying that, with the peer connecting inside
/// 3 s windows under other jobs' load, put the ratio over 2 in 7 of 48 rounds (1 of 44
/// with no peer).
///
/// A peer that made its server spin would slow the baseline too (same cores), so the two
/// servers' CPU time is compared as well: a spinning shard burns 100 ticks a second; these
/// servers used 79 to 238 ticks over their rounds, the two of a pair within 10%.
fn a_never_reading_peer_does_not_hurt_the_others(engine: Engine) {
    let _alone = alone();
    let baseline = Server::start(engine, &free_ports(1), &[]);
    let with_peer = Server::start(engine, &free_ports(1), &[]);
    let servers = [&baseline, &with_peer];
    let cpu_before = servers.map(|s| cpu_ticks(s.pid()));
    let (mut ratios, mut rounds) = (Vec::new(), 0);
    while ratios.len() < ROUNDS && rounds < MAX_ROUNDS {
        rounds += 1;
        let [alone_p99, beside_p99] = paired_round(engine, &baseline, &with_peer);
        let ratio = beside_p99 as f64 / alone_p99 as f64;
        let judged = alone_p99 <= SATURATED_US;
        eprintln!(
            "{engine:?} round {rounds}: p99 {alone_p99} us alone, {beside_p99} us beside \
             a peer that never reads ({ratio:.2}x){}",
            if judged { "" } else { ", not judged" }
        );
        if judged {
            ratios.push(ratio);
        }
    }
    let cpu = [0, 1].map(|i| cpu_ticks(servers[i].pid()) - cpu_before[i]);
    eprintln!("{engine:?}: server CPU {} and {} ticks", cpu[0], cpu[1]);
    assert!(
        cpu[1] <= 2 * cpu[0],
        "{engine:?}: the server with the peer used {} CPU ticks, the other {}",
        cpu[1],
        cpu[0]
    );
    ratios.sort_by(f64::total_cmp);
    // Not judging is not passing: a machine too busy for every round fails the test,
    // with the reason, rather than letting it pass unmeasured.
    assert!(
        ratios.len() >= ROUNDS,
        "{engine:?}: could not measure: the machine was too busy in {} of {rounds} rounds \
         (baseline p99 over {SATURATED_US} us); run this test on a machine not otherwise loaded",
        rounds - ratios.len()
    );
    assert!(
        ratios[ROUNDS / 2] <= 2.0,
        "{engine:?}: p99 beside a peer that never reads over p99 without, judged \
         rounds: {ratios:.2?}"
    );
    let stats = [baseline, with_peer].map(Server::stop);
    let conns = 1000 * rounds as u64;
    assert_eq!(u(&stats[0], "totals.accepted"), conns, "{engine:?}");
    assert_eq!(u(&stats[1], "totals.accepted"), conns + rounds as u64);
}

common::per_engine!(a_never_reading_peer_does_not_hurt_the_others);

/// Churn threads, each connecting from its own address, 127.0.0.1 to 127.0.0.8.
const CHURN_THREADS: u8 = 8;

/// IP_BIND_ADDRESS_NO_PORT (Linux 4.2+): bind() sets only the source address and connect()
/// picks the port for the whole 4-tuple, as with no bind at all. A plain bind() to port 0
/// would need a port free on that address for every connection, TIME_WAIT ones included:
/// 25,000 per address over the two engines, near the 28,232 of ip_local_port_range
/// (32768-60999), with other jobs here holding thousands more on 127.0.0.x.
fn bind_address_no_port(s: &Socket) {
    c1m::sys::set_bind_address_no_port(s.as_raw_fd()).expect("IP_BIND_ADDRESS_NO_PORT");
}

/// `per_thread` connections from each of 127.0.0.1..=8, round robin over `ports`: each
/// connects, writes 8 bytes, reads their echo and closes.
fn churn(ports: &[u16], per_thread: u32) {
    let threads: Vec<_> = (0..CHURN_THREADS)
        .map(|t| {
            let ports = ports.to_vec();
            thread::spawn(move || {
                let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, t + 1), 0);
                for i in 0..per_thread {
                    let port = ports[(i as usize + t as usize) % ports.len()];
                    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                    bind_address_no_port(&s);
                    s.bind(&source.into()).unwrap();
                    s.connect(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())
                        .unwrap_or_else(|e| panic!("connect from {source} to {port}: {e}"));
                    let mut s = TcpStream::from(s);
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let msg = (u64::from(t) << 32 | u64::from(i)).to_le_bytes();
                    s.write_all(&msg).unwrap();
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// 100,000 connections come and go; the server ends as it began: nothing open, nothing
/// refused, every byte echoed. The bound on its resident memory's growth, 16 MiB between
/// the 10,000th and the 100,000th connection, is 186 bytes per connection: a leak of that
/// much per connection crosses it (a slot with its queue, a fixed-file slot's socket). The
/// first 10,000 warm the allocator and the slabs up; after them, with a few connections open
/// at a time, the measured growth was 0 KiB in every run, for both engines.
fn churn_of_100k_connections_leaves_nothing_behind(engine: Engine) {
    let _shared = shared();
    let first: u32 = 10_000 / u32::from(CHURN_THREADS);
    let rest: u32 = 90_000 / u32::from(CHURN_THREADS);
    let ports = free_ports(4);
    let list = port_list(&ports);
    let server = Server::start(engine, &ports, &[]);
    assert!(
        server.children().is_empty(),
        "{engine:?}: shards are threads of one process, so its VmRSS is all of them"
    );
    let started = Instant::now();
    churn(&list, first);
    let rss_10k = vm_rss_kib(server.pid());
    churn(&list, rest);
    let rss_100k = vm_rss_kib(server.pid());
    let took = started.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || server_side_sockets(&list) == 0),
        "{engine:?}: {} connections still open 5 s after their clients closed",
        server_side_sockets(&list)
    );
    echoes(list[0]);
    eprintln!(
        "{engine:?}: 100,000 connections in {took:.1?}; VmRSS {rss_10k} KiB after \
         10,000, {rss_100k} KiB after 100,000"
    );
    assert!(
        rss_100k <= rss_10k + 16 * 1024,
        "{engine:?}: VmRSS grew from {rss_10k} KiB to {rss_100k} KiB over 90,000 connections"
    );
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 100_001, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 100_001, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.refused"), 0, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.bytes_in"), 100_000 * 8 + 13);
    assert_eq!(u(&stats, "totals.bytes_out"), 100_000 * 8 + 13);
}

common::per_engine!(churn_of_100k_connections_leaves_nothing_behind);

/// Stands for any IMF-fixdate: received dates are rewritten to it before comparing.
const DATE: &str = "Www, DD Mmm YYYY HH:MM:SS GMT";

/// Rewrites every `Date: ` value (29 bytes) to `DATE`.
fn normalize_dates(got: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(got).into_owned();
    let mut from = 0;
    while let Some(at) = text[from..].find("Date: ") {
        let start = from + at + 6;
        let end = (start + 29).min(text.len());
        text.replace_range(start..end, DATE);
        from = start + DATE.len();
    }
    text
}

const GET: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";

fn ok_answer() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: c1m\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
         Content-Length: 13\r\n\r\nHello, World!"
    )
}

/// The answer (src/proto/http/request.rs `write_answer`) to input that cannot be framed.
fn closing_answer(status: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nServer: c1m\r\nDate: {DATE}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
}

/// How reading a connection ended.
#[derive(Debug, PartialEq)]
enum End {
    Eof,
    Error(ErrorKind),
}

/// Reads until EOF or an error; what arrived, and how it ended.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, End::Error(e.kind())),
        }
    }
}

/// Sends `garbage` on a fresh connection (then, if `endless`, keeps sending more of the same
/// kind until told to stop), reads to the end, and describes any departure from
/// `expected`-then-EOF.
fn garbage_case(port: u16, garbage: Vec<u8>, endless: bool, expected: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        // The server may close before it has all: a failed write only ends the writer.
        if w.write_all(&garbage).is_err() || !endless {
            return;
        }
        let more = &garbage[garbage.len() / 2..];
        while !stopping.load(Ordering::Relaxed) {
            match w.write(more) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
    let (got, end) = read_all(&mut s);
    stop.store(true, Ordering::Relaxed);
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    let text = normalize_dates(&got);
    if text != expected {
        Some(format!("answered {text:?}, then {end:?}"))
    } else if end != End::Eof {
        Some(format!(
            "answered exactly, then {end:?} instead of EOF: the server closed with input \
             unread, which sends RST, not FIN (no half-close first, RFC 9112 9.6)"
        ))
    } else {
        None
    }
}

/// A keep-alive connection that asks and checks one answer at a time until `stop`; the
/// answers it got.
fn well_behaved(port: u16, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let expected = ok_answer();
        let mut answer = vec![0u8; expected.len()];
        let mut answers = 0;
        while !stop.load(Ordering::Relaxed) {
            s.write_all(GET).unwrap();
            s.read_exact(&mut answer)
                .unwrap_or_else(|e| panic!("after {answers} answers: {e}"));
            assert_eq!(normalize_dates(&answer), expected, "answer {answers}");
            answers += 1;
        }
        answers
    })
}

/// Makes about `n` bytes of one kind of bad input, varied by `seed`.
type MakeGarbage = fn(usize, u64) -> Vec<u8>;

fn line_without_crlf(n: usize, _seed: u64) -> Vec<u8> {
    [b"GET /".as_slice(), &b"a".repeat(n)].concat()
}

fn binary_after_request_line(n: usize, seed: u64) -> Vec<u8> {
    let mut g = b"GET / HTTP/1.1\r\n".to_vec();
    // Bytes with the high bit set: none can start a header name.
    g.extend(random_bytes(n, seed).iter().map(|b| b | 0x80));
    g
}

fn upload_over_the_limit(n: usize, _seed: u64) -> Vec<u8> {
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n";
    [head.as_slice(), &b"x".repeat(n)].concat()
}

/// Each kind of bad input, and the status line of its answer (src/proto/http/request.rs).
const GARBAGE: [(&str, MakeGarbage, &str); 4] = [
    ("random binary", random_bytes, "400 Bad Request"),
    (
        "a line without CRLF over --max-header-bytes",
        line_without_crlf,
        "431 Request Header Fields Too Large",
    ),
    (
        "a request line, then binary",
        binary_after_request_line,
        "400 Bad Request",
    ),
    (
        "a body over --max-body-bytes",
        upload_over_the_limit,
        "413 Content Too Large",
    ),
];

/// Times each kind of garbage is sent, each way.
const ROUNDS_OF_GARBAGE: u64 = 5;

/// Each kind of bad input is sent twice: whole, 2,000 bytes in one write, which one read
/// takes (a 4 KiB provided buffer, a 64 KiB read buffer), and as a stream that goes on, as
/// from a client still uploading when the answer comes. Both must get exactly their one
/// answer, then EOF: a server that closes with input unread sends RST instead of FIN, and
/// a client still writing then fails (EPIPE, ECONNRESET) before it reads the answer
/// (Python's http.client uploading 20 MB does), which is why RFC 9112 9.6 asks servers to
/// half-close first and drain. All of it goes to a one-shard server while a well-behaved
/// keep-alive connection on the same shard is answered, exactly, one request at a time.
fn http_garbage_is_answered_400_and_closed_and_others_are_unaffected(engine: Engine) {
    let _shared = shared();
    // 2,000 bytes of a line are over this.
    const MAX_HEADER: &str = "1024";
    // What went wrong, and how often: "engine, kind (how): what" -> count.
    let mut failures = std::collections::BTreeMap::<String, u32>::new();
    let ports = free_ports(1);
    let server = Server::start(
        engine,
        &ports,
        &[
            "--proto",
            "http",
            "--cores",
            "1",
            "--max-header-bytes",
            MAX_HEADER,
            "--max-body-bytes",
            "4096",
        ],
    );
    let port = first_port(&ports);
    let stop = Arc::new(AtomicBool::new(false));
    let good = well_behaved(port, stop.clone());
    let mut cases = 0;
    for round in 0..ROUNDS_OF_GARBAGE {
        for (what, make, status) in GARBAGE {
            for endless in [false, true] {
                let garbage = make(if endless { 64 * 1024 } else { 2000 }, round + 1);
                cases += 1;
                let how = if endless { "endless" } else { "whole" };
                if let Some(f) = garbage_case(port, garbage, endless, &closing_answer(status)) {
                    *failures
                        .entry(format!("{engine:?}, {what} ({how}): {f}"))
                        .or_default() += 1;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let answers = good.join().expect("the well-behaved connection");
    assert!(answers > 0, "{engine:?}");
    let stats = server.stop();
    // Every garbage case was answered once (error answers count as requests).
    assert_eq!(
        u(&stats, "totals.requests"),
        answers + cases,
        "{engine:?}: {stats}"
    );
    let report: Vec<String> = failures
        .iter()
        .map(|(f, n)| format!("{n} of {ROUNDS_OF_GARBAGE}: {f}"))
        .collect();
    assert!(
        report.is_empty(),
        "the well-behaved connections and the request counts were right, but:\n{}",
        report.join("\n")
    );
}

common::per_engine!(http_garbage_is_answered_400_and_closed_and_others_are_unaffected);

/// Parses complete answers off the front of `buf`, which must each be exactly a 200 with
/// Content-Length 13 and body `Hello, World!`; returns how many, leaving any partial one.
fn take_answers(buf: &mut Vec<u8>) -> u64 {
    let mut n = 0;
    loop {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(
                buf.len() < 1024,
                "no header end in {:?}",
                String::from_utf8_lossy(buf)
            );
            return n;
        };
        let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"), "{head:?}");
        let mut length = None;
        for line in lines {
            let (name, value) = line.split_once(": ").expect("a header line");
            if name.eq_ignore_ascii_case("content-length") {
                assert_eq!(length, None, "two Content-Lengths: {head:?}");
                length = Some(value.parse::<usize>().unwrap());
            }
        }
        assert_eq!(length, Some(13), "{head:?}");
        let end = head_end + 4 + 13;
        if buf.len() < end {
            return n;
        }
        assert_eq!(&buf[head_end + 4..end], b"Hello, World!");
        buf.drain(..end);
        n += 1;
    }
}

/// One client connection: pipelines `batch` GETs, reads and parses their answers, again,
/// until EOF or an error. Returns the complete answers and the bytes left of a partial one.
fn http_client(port: u16, batch: usize) -> (u64, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let requests = GET.repeat(batch);
    let (mut answers, mut buf, mut chunk) = (0, Vec::new(), [0u8; 4096]);
    loop {
        if s.write_all(&requests).is_err() {
            // The server closed, maybe with answers to the last batch on their way.
            let (rest, _) = read_all(&mut s);
            buf.extend_from_slice(&rest);
            return (answers + take_answers(&mut buf), buf.len());
        }
        let mut owed = batch as u64;
        while owed > 0 {
            match s.read(&mut chunk) {
                Ok(0) => return (answers + take_answers(&mut buf), buf.len()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let got = take_answers(&mut buf);
                    assert!(got <= owed, "more answers than requests");
                    owed -= got;
                    answers += got;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    panic!("no answer within 10 s: {e}")
                }
                Err(_) => return (answers + take_answers(&mut buf), buf.len()),
            }
        }
    }
}

/// 32 connections (half asking one request at a time, half pipelining 4) busy when SIGTERM
/// comes: the answers the clients got whole equal the requests the server counted, so
/// every request it read was answered and arrived, and nothing arrived cut.
fn sigterm_under_http_load_answers_every_request_it_read(engine: Engine) {
    let _shared = shared();
    let ports = free_ports(2);
    let list = port_list(&ports);
    let mut server = Server::start(engine, &ports, &["--proto", "http"]);
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let port = list[c % list.len()];
            thread::spawn(move || http_client(port, if c % 2 == 0 { 1 } else { 4 }))
        })
        .collect();
    thread::sleep(Duration::from_secs(1));
    let stats = server.stop_within(Duration::from_secs(10));
    let mut received = 0;
    for (c, client) in clients.into_iter().enumerate() {
        let (answers, partial) = client.join().unwrap();
        assert_eq!(partial, 0, "{engine:?}: client {c} got a cut answer");
        assert!(answers > 0, "{engine:?}: client {c} got no answer in 1 s");
        received += answers;
    }
    eprintln!("{engine:?}: {received} answers before and during the stop");
    assert_eq!(
        u(&stats, "totals.requests"),
        received,
        "{engine:?}: {stats}"
    );
    assert_eq!(u(&stats, "totals.accepted"), 32);
    assert_eq!(u(&stats, "totals.closed"), 32);
}

common::per_engine!(sigterm_under_http_load_answers_every_request_it_read);

/// Kills (SIGKILL) the child when dropped, so a failing test leaves no load generator.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// uring-load holding 2,000 busy echo connections is SIGKILLed: the kernel closes them
/// (FIN, or RST where echoes were unread), and the server closes its side of every one.
fn a_sigkilled_load_generator_leaves_no_connection_behind(engine: Engine) {
    let _shared = shared();
    let ports = free_ports(2);
    let list = port_list(&ports);
    let server = Server::start(engine, &ports, &[]);
    let mut loader = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_uring-load"))
            .args(["--host", "127.0.0.1", "--ports", &ports, "--quiet"])
            .args(["--conns", "2000", "--duration", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || server_side_sockets(&list)
            >= 2000),
        "{engine:?}: {} of 2,000 connections up after 10 s",
        server_side_sockets(&list)
    );
    // Let requests flow on every connection, so some die with echoes in flight.
    thread::sleep(Duration::from_millis(300));
    // Child::kill is SIGKILL: no exit path of uring-load runs.
    loader.0.kill().unwrap();
    let status = loader.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        wait_until(Duration::from_secs(5), || server_side_sockets(&list) == 0),
        "{engine:?}: {} connections still open 5 s after their client died",
        server_side_sockets(&list)
    );
    echoes(list[1]);
    let stats = server.stop();
    let accepted = u(&stats, "totals.accepted");
    assert_eq!(accepted, 2001, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), accepted, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.refused"), 0, "{engine:?}: {stats}");
}

common::per_engine!(a_sigkilled_load_generator_leaves_no_connection_behind);
