//! The per-connection limits against both engines: idle, header (slowloris), body and send
//! timeouts and the `--max-conns` cap, reached and recovered. Real sockets on loopback, exact bytes; each
//! test body is one case per engine (`common::per_engine!`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Server, first_port, free_ports, load, u};

const GET: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n";

fn connect(ports: &str) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", first_port(ports))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until EOF or reset; returns what arrived and how long after `since` it ended.
fn read_to_close(s: &mut TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e} (after {:?})", since.elapsed()),
        }
    }
    (got, since.elapsed())
}

/// One keep-alive HTTP exchange; the answer is exactly 128 bytes ending in the body.
fn exchange(s: &mut TcpStream) {
    s.write_all(GET).unwrap();
    let mut answer = [0u8; 128];
    s.read_exact(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with(b"\r\n\r\nHello, World!"));
}

fn an_idle_connection_is_closed_after_the_idle_timeout_and_not_before(engine: Engine) {
    for proto in ["echo", "http"] {
        let ports = free_ports(1);
        let server = Server::start(engine, &ports, &["--proto", proto, "--idle-timeout", "2"]);
        let started = Instant::now();
        let mut idle = connect(&ports);
        // A connection that keeps moving bytes (every 200 ms, ten times within the
        // timeout, so a busy machine does not idle it out) outlives the timeout twice over.
        let mut busy = connect(&ports);
        let mut rounds = 0;
        while started.elapsed() < Duration::from_millis(4500) {
            if proto == "http" {
                exchange(&mut busy);
            } else {
                busy.write_all(b"ping").unwrap();
                let mut pong = [0u8; 4];
                busy.read_exact(&mut pong).unwrap();
                assert_eq!(&pong, b"ping");
            }
            rounds += 1;
            thread::sleep(Duration::from_millis(200));
        }
        let (got, after) = read_to_close(&mut idle, started);
        assert!(got.is_empty(), "{engine:?} {proto}: {got:?}");
        assert!(
            after >= Duration::from_secs(2),
            "{engine:?} {proto}: closed after {after:?}, before the timeout"
        );
        assert!(rounds >= 3, "{engine:?} {proto}: {rounds} exchanges");
        drop(busy);
        thread::sleep(Duration::from_millis(100));
        let stats = server.stop();
        assert_eq!(
            u(&stats, "totals.idle_timeouts"),
            1,
            "{engine:?} {proto}: {stats}"
        );
        assert_eq!(u(&stats, "totals.accepted"), 2);
        assert_eq!(u(&stats, "totals.closed"), 2);
    }
}

common::per_engine!(an_idle_connection_is_closed_after_the_idle_timeout_and_not_before);

fn idle_timeout_zero_keeps_connections(engine: Engine) {
    let ports = free_ports(1);
    let server = Server::start(engine, &ports, &["--idle-timeout", "0"]);
    let mut s = connect(&ports);
    thread::sleep(Duration::from_millis(1500));
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");
    drop(s);
    thread::sleep(Duration::from_millis(100));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.idle_timeouts"), 0, "{stats}");
}

common::per_engine!(idle_timeout_zero_keeps_connections);

/// Slowloris: a head sent a byte at a time keeps the connection busy but never ends; the
/// header timeout answers 408 and closes it, while other connections are served as usual.
fn a_head_that_trickles_in_is_answered_408_at_the_header_timeout(engine: Engine) {
    let ports = free_ports(1);
    let server = Server::start(
        engine,
        &ports,
        &[
            "--proto",
            "http",
            "--header-timeout",
            "1",
            "--idle-timeout",
            "5",
        ],
    );
    let mut slow = connect(&ports);
    let mut good = connect(&ports);
    let started = Instant::now();
    let head = b"GET /plaintext HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    // A byte every 100 ms: 25 bytes in the first 2.5 s, unless the server closes first.
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    let closed_at = loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{engine:?}: never closed"
        );
        if sent < head.len() && slow.write_all(&head[sent..=sent]).is_ok() {
            sent += 1;
        }
        exchange(&mut good);
        match slow.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break started.elapsed(),
            Err(_) => {} // timed out: nothing yet
        }
    };
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n")
            && text.contains("Connection: close\r\n"),
        "{engine:?}: {text:?}"
    );
    assert!(
        closed_at >= Duration::from_secs(1),
        "{engine:?}: closed after {closed_at:?}"
    );
    assert!(
        sent > 5,
        "{engine:?}: the head kept arriving ({sent} bytes)"
    );
    exchange(&mut good);
    drop(good);
    thread::sleep(Duration::from_millis(100));
    let stats = server.stop();
    assert_eq!(
        u(&stats, "totals.header_timeouts"),
        1,
        "{engine:?}: {stats}"
    );
    assert_eq!(u(&stats, "totals.idle_timeouts"), 0, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 2);
}

common::per_engine!(a_head_that_trickles_in_is_answered_408_at_the_header_timeout);

/// nginx's client_body_timeout: a body that stalls (a Content-Length one, a chunked one) is
/// answered 408 and closed after the body timeout, while a body whose bytes keep coming is
/// read whole, however long it takes.
fn a_body_that_stalls_is_answered_408_at_the_body_timeout(engine: Engine) {
    let ports = free_ports(1);
    let server = Server::start(
        engine,
        &ports,
        &[
            "--proto",
            "http",
            "--body-timeout",
            "1",
            "--header-timeout",
            "5",
            "--idle-timeout",
            "10",
        ],
    );
    let started = Instant::now();
    let mut stalled = connect(&ports);
    stalled
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let mut chunked = connect(&ports);
    chunked
        .write_all(
            b"GET /plaintext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        )
        .unwrap();
    // A byte every 300 ms: 2.4 s of body, over twice the body timeout.
    let mut trickle = connect(&ports);
    trickle
        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    for b in b"1234567" {
        thread::sleep(Duration::from_millis(300));
        trickle.write_all(&[*b]).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    // The body's last byte and the next request: two answers, 200 each.
    trickle.write_all(b"8").unwrap();
    exchange(&mut trickle);
    let mut second = [0u8; 128];
    trickle.read_exact(&mut second).unwrap();
    assert!(second.starts_with(b"HTTP/1.1 200 OK\r\n"), "{engine:?}");
    for (name, s) in [("content-length", &mut stalled), ("chunked", &mut chunked)] {
        let (got, after) = read_to_close(s, started);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n")
                && text.contains("Connection: close\r\n"),
            "{engine:?} {name}: {text:?}"
        );
        assert!(
            after >= Duration::from_secs(1),
            "{engine:?} {name}: closed after {after:?}"
        );
    }
    drop(trickle);
    thread::sleep(Duration::from_millis(100));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.body_timeouts"), 2, "{engine:?}: {stats}");
    assert_eq!(
        u(&stats, "totals.header_timeouts"),
        0,
        "{engine:?}: {stats}"
    );
    assert_eq!(u(&stats, "totals.idle_timeouts"), 0, "{engine:?}: {stats}");
    // The trickled request and the one after it; a 408 answers no request.
    assert_eq!(u(&stats, "totals.requests"), 2, "{engine:?}: {stats}");
}

common::per_engine!(a_body_that_stalls_is_answered_408_at_the_body_timeout);

/// A socket with a small receive buffer (the kernel doubles it), connected to the server.
fn connect_small_window(ports: &str, rcvbuf: usize) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], first_port(ports)).into();
    s.connect(&addr.into()).unwrap();
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// nginx's send_timeout: a peer that sends but takes none of the echo owed to it is cut
/// after the send timeout, while one that takes 16 KiB every 600 ms (less than the timeout
/// apart, for three times as long) is sent everything, exactly. (What the server's socket
/// buffer holds counts as taken, as in nginx: the kernel only reports the socket writable
/// again once much of that buffer is free, so a peer that takes too little at a time from a
/// deep buffer can be cut even though it reads. The timer's unit tests cover the deadline
/// moving with each write.)
fn a_peer_that_takes_none_of_its_output_is_cut_at_the_send_timeout(engine: Engine) {
    let ports = free_ports(1);
    let server = Server::start(
        engine,
        &ports,
        &["--send-timeout", "1", "--idle-timeout", "30"],
    );
    let data = common::random_bytes(512 * 1024, 7);
    let started = Instant::now();
    let deaf = connect_small_window(&ports, 4096);
    let mut w = deaf.try_clone().unwrap();
    let deaf_writer = thread::spawn(move || {
        // Until the server cuts it: a write fails (reset, broken pipe), or times out if it
        // never does.
        let chunk = [7u8; 64 * 1024];
        loop {
            if let Err(e) = w.write_all(&chunk) {
                return (e.kind(), started.elapsed());
            }
        }
    });
    let mut slow = connect_small_window(&ports, 16 * 1024);
    let mut w = slow.try_clone().unwrap();
    let sent = data.clone();
    let slow_writer = thread::spawn(move || w.write_all(&sent));
    let mut back = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while started.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(600));
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "{engine:?}: the slow reader was cut");
        back.extend_from_slice(&buf[..n]);
    }
    assert!(
        back.len() < data.len() / 2,
        "{engine:?}: the output was not owed for long ({} bytes taken by 3 s)",
        back.len()
    );
    while back.len() < data.len() {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "{engine:?}: EOF after {} bytes", back.len());
        back.extend_from_slice(&buf[..n]);
    }
    assert!(back == data, "{engine:?}: the echo differs");
    slow_writer.join().unwrap().unwrap();
    let (kind, cut_at) = deaf_writer.join().unwrap();
    assert!(
        matches!(kind, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "{engine:?}: the deaf peer's write ended with {kind:?} after {cut_at:?}"
    );
    assert!(
        cut_at >= Duration::from_secs(1) && cut_at < Duration::from_secs(6),
        "{engine:?}: cut after {cut_at:?}"
    );
    drop((slow, deaf));
    thread::sleep(Duration::from_millis(100));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.send_timeouts"), 1, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.idle_timeouts"), 0, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 2, "{engine:?}: {stats}");
}

common::per_engine!(a_peer_that_takes_none_of_its_output_is_cut_at_the_send_timeout);

/// Load that touches every connection far more often than the idle timeout (about every
/// 100 ms, against 3 s) loses none to it.
fn busy_connections_never_time_out(engine: Engine) {
    let ports = free_ports(2);
    let server = Server::start(
        engine,
        &ports,
        &[
            "--proto",
            "http",
            "--idle-timeout",
            "3",
            "--header-timeout",
            "3",
        ],
    );
    let (code, r) = load(
        &ports,
        &[
            "--proto",
            "http",
            "--conns",
            "200",
            "--rate",
            "2000",
            "--duration",
            "3",
        ],
    );
    assert_eq!(code, 0, "{engine:?}: {r}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    assert_eq!(u(&r, "conns_closed_by_peer"), 0, "{r}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.idle_timeouts"), 0, "{stats}");
    assert_eq!(u(&stats, "totals.header_timeouts"), 0, "{stats}");
    assert_eq!(u(&stats, "totals.requests"), u(&r, "requests"), "{stats}");
}

common::per_engine!(busy_connections_never_time_out);

/// At `--max-conns` a new connection is closed at once (and counted); when some close, new
/// ones are taken again.
fn the_connection_cap_is_reached_and_recovered(engine: Engine) {
    let ports = free_ports(2);
    let server = Server::start(engine, &ports, &["--max-conns", "50"]);
    let port = |i: usize| -> u16 { ports.split(',').nth(i % 2).unwrap().parse().unwrap() };
    let open = |i: usize| {
        let mut s = TcpStream::connect(("127.0.0.1", port(i))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hi").unwrap();
        s
    };
    let echoed = |s: &mut TcpStream| {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok() && &b == b"hi"
    };
    let mut held: Vec<TcpStream> = (0..50).map(open).collect();
    for s in &mut held {
        assert!(echoed(s), "{engine:?}: one of the first 50 was not served");
    }
    for i in 0..10 {
        let mut s = open(i);
        let t = Instant::now();
        let (got, after) = read_to_close(&mut s, t);
        assert!(
            got.is_empty(),
            "{engine:?}: a connection over the cap was served"
        );
        assert!(
            after < Duration::from_secs(2),
            "{engine:?}: refused after {after:?}"
        );
    }
    held.drain(..5);
    thread::sleep(Duration::from_millis(200));
    let mut again: Vec<TcpStream> = (0..5).map(open).collect();
    for s in &mut again {
        assert!(echoed(s), "{engine:?}: the cap did not recover");
    }
    drop(held);
    drop(again);
    thread::sleep(Duration::from_millis(200));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.over_cap"), 10, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.accepted"), 55, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 55, "{engine:?}: {stats}");
}

common::per_engine!(the_connection_cap_is_reached_and_recovered);

/// After an answer that closes, the server shuts its write side and reads on until the
/// peer's EOF (a lingering close): a peer still sending gets the whole answer then EOF, not
/// a reset that could destroy it; one that never stops is cut after the linger time (5 s).
fn a_closing_answer_survives_a_peer_that_keeps_sending(engine: Engine) {
    let ports = free_ports(1);
    let server = Server::start(engine, &ports, &["--proto", "http"]);
    let mut s = connect(&ports);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let started = Instant::now();
    let writer = thread::spawn(move || {
        // Pipelined requests that will never be answered, until the server cuts us.
        let more = GET.repeat(1000);
        loop {
            if let Err(e) = w.write_all(&more) {
                return (e.kind(), started.elapsed());
            }
        }
    });
    let (got, _) = read_to_close(&mut s, started);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\nHello, World!"),
        "{engine:?}: {text:?}"
    );
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{engine:?}: {text:?}");
    let (err, after) = writer.join().unwrap();
    assert!(
        matches!(err, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "{engine:?}: {err:?}"
    );
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_secs(9),
        "{engine:?}: the lingering close was cut after {after:?}"
    );
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), 1, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 1, "{engine:?}: {stats}");
}

common::per_engine!(a_closing_answer_survives_a_peer_that_keeps_sending);
