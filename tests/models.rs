//! The server models (`model-server --model NAME`): every model passes the echo suite within
//! what it holds, over real loopback sockets with every byte checked; then what is one
//! model's own: select's FD_SETSIZE refusal, fork's reaped children, the capacity errors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use common::{Family, Server, first_port, free_ports, random_bytes, u};

/// One `#[test]` per model for each test body `fn NAME(model: &str)`:
/// `per_model!(NAME)` adds `mod NAME { #[test] fn iterative() .. }`.
macro_rules! per_model {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                per_model!(@cases $case: iterative "iterative", fork "fork", thread "thread",
                    select "select", poll "poll", epoll_lt "epoll-lt", epoll_et "epoll-et",
                    sigio "sigio", half_sync_half_reactor "half-sync-half-reactor",
                    leader_followers "leader-followers", sim_proactor "sim-proactor",
                    posix_aio "posix-aio", uring "uring");
            }
        )+
    };
    (@cases $case:ident: $($name:ident $model:literal),+) => {
        $(
            #[test]
            fn $name() {
                super::$case($model)
            }
        )+
    };
}

/// How many clients a test runs at once against `model`: the iterative server serves one.
fn at_once(model: &str, n: u64) -> u64 {
    if model == "iterative" { 1 } else { n }
}

fn start(model: &str, ports: &str, extra: &[&str]) -> Server {
    Server::start_model(model, Family::V4, ports, extra)
}

/// Writes `data` and half-closes in one thread while reading to EOF in this one.
fn echo_stream(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&stream).read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

fn exact_echo_from_1_byte_to_1_mib_over_several_ports(model: &str) {
    let ports = free_ports(3);
    let server = start(model, &ports, &[]);
    let mut bytes = 0u64;
    for (size, conns) in [(1, 50), (100, 50), (4096, 16), (65_543, 8), (1 << 20, 4)] {
        let conns = at_once(model, conns);
        let (code, r) = server.load(&[
            "--conns",
            &conns.to_string(),
            "--size",
            &size.to_string(),
            "--requests",
            "3",
        ]);
        assert_eq!(code, 0, "{model} size {size}: {r}");
        assert_eq!(u(&r, "conns_established"), conns, "{model} size {size}");
        assert_eq!(u(&r, "requests"), conns * 3, "{model} size {size}");
        assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
        bytes += conns * 3 * size;
    }
    // A foreign client too: random bytes through std sockets on every port, one at a time.
    for (i, port) in ports.split(',').enumerate() {
        let data = random_bytes(300_001 + i, i as u64 + 1);
        let s = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
        assert_eq!(echo_stream(s, data.clone()), data, "{model} port {port}");
        bytes += data.len() as u64;
    }
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.bytes_in"), bytes, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.bytes_out"), bytes, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.accepted"), u(&stats, "totals.closed"));
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
}

fn many_connections_at_once_each_answered(model: &str) {
    let ports = free_ports(2);
    let server = start(model, &ports, &[]);
    let conns = at_once(model, 500);
    let (code, r) = server.load(&["--conns", &conns.to_string(), "--duration", "1"]);
    assert_eq!(code, 0, "{model}: {r}");
    assert_eq!(u(&r, "conns_established"), conns, "{model}");
    assert!(
        u(&r, "requests") >= conns,
        "{model}: every connection answered: {r}"
    );
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), conns, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), conns, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.bytes_in"), u(&stats, "totals.bytes_out"));
}

fn half_close_echoes_what_arrived_then_closes(model: &str) {
    let ports = free_ports(1);
    let server = start(model, &ports, &[]);
    for n in [0usize, 1, 70_000, 1 << 20] {
        let data = random_bytes(n, 9);
        let s = TcpStream::connect(("127.0.0.1", first_port(&ports))).unwrap();
        // read_to_end returning is the server's close: EOF after exactly the echo.
        assert_eq!(echo_stream(s, data.clone()), data, "{model} {n} bytes");
    }
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 4, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 4, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{model}: {stats}");
}

fn client_reset_mid_stream_frees_the_connection_and_others_go_on(model: &str) {
    let ports = free_ports(1);
    let server = start(model, &ports, &[]);
    let port = first_port(&ports);
    let mut victim = TcpStream::connect(("127.0.0.1", port)).unwrap();
    victim.write_all(&random_bytes(256 * 1024, 3)).unwrap();
    let victim = socket2::Socket::from(victim);
    victim.set_linger(Some(Duration::ZERO)).unwrap();
    drop(victim); // RST, with the echo unread
    let data = random_bytes(500_000, 4);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(echo_stream(s, data.clone()), data, "{model}");
    thread::sleep(Duration::from_millis(200));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 2, "{model}: {stats}");
    assert_eq!(
        u(&stats, "totals.closed"),
        2,
        "{model}: the reset one was freed"
    );
    assert_eq!(u(&stats, "totals.conn_errors"), 1, "{model}: {stats}");
}

/// Byte `i` of connection `c`'s stream, so a reader can check a prefix without a copy.
fn stream_byte(c: usize, i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(c * 13) % 251) as u8
}

fn sigterm_while_busy_answers_what_arrived_and_exits_zero(model: &str) {
    let ports = free_ports(2);
    let mut server = start(model, &ports, &["--shutdown-timeout", "2"]);
    let clients_n = at_once(model, 8) as usize;
    let mut clients = Vec::new();
    for c in 0..clients_n {
        let port: u16 = ports.split(',').nth(c % 2).unwrap().parse().unwrap();
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let mut sent = 0usize;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = stream_byte(c, sent + j);
                }
                match w.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => return sent,
                }
            }
        });
        let reader = thread::spawn(move || {
            let mut s = s;
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => {
                        for (j, b) in buf[..n].iter().enumerate() {
                            assert_eq!(*b, stream_byte(c, got + j), "conn {c} byte {}", got + j);
                        }
                        got += n;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return got,
                }
            }
        });
        clients.push((writer, reader));
    }
    thread::sleep(Duration::from_millis(500));
    let stats = server.stop_within(Duration::from_secs(8));
    let mut echoed = 0;
    for (writer, reader) in clients {
        let got = reader.join().unwrap();
        let sent = writer.join().unwrap();
        assert!(got <= sent);
        echoed += got;
    }
    assert!(echoed > 0, "{model}: the clients were busy");
    // Everything the server read, it handed back before closing.
    assert_eq!(
        u(&stats, "totals.bytes_in"),
        u(&stats, "totals.bytes_out"),
        "{model}: {stats}"
    );
    assert_eq!(
        u(&stats, "totals.accepted"),
        clients_n as u64,
        "{model}: {stats}"
    );
    assert_eq!(
        u(&stats, "totals.closed"),
        clients_n as u64,
        "{model}: {stats}"
    );
}

fn a_peer_that_does_not_read_is_pushed_back_then_gets_every_byte(model: &str) {
    let ports = free_ports(1);
    let server = start(model, &ports, &[]);
    let s = TcpStream::connect(("127.0.0.1", first_port(&ports))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // Write without reading until the writes block: the server stopped reading us.
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut sent = 0usize;
        let chunk: Vec<u8> = (0..65_536).map(|i| stream_byte(7, i)).collect();
        while sent < 256 << 20 {
            let off = sent % chunk.len();
            match w.write(&chunk[off..]) {
                Ok(n) => sent += n,
                Err(_) => break, // timed out: pushed back
            }
        }
        sent
    });
    let sent = writer.join().unwrap();
    assert!(
        sent < 64 << 20,
        "{model}: {sent} bytes went in while nothing was read: the server kept reading"
    );
    // Now read: exactly what was written comes back, then EOF after our half-close.
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::with_capacity(sent);
    (&s).read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), sent, "{model}");
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == stream_byte(7, i % 65_536))
    );
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.bytes_out"), sent as u64, "{model}");
}

per_model!(
    exact_echo_from_1_byte_to_1_mib_over_several_ports,
    many_connections_at_once_each_answered,
    half_close_echoes_what_arrived_then_closes,
    client_reset_mid_stream_frees_the_connection_and_others_go_on,
    sigterm_while_busy_answers_what_arrived_and_exits_zero,
    a_peer_that_does_not_read_is_pushed_back_then_gets_every_byte,
);

// --- What is one model's own ---

/// Runs model-server with `args` and expects it to refuse them: its exit code and stderr.
fn refused(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_model-server"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} started");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_target_beyond_a_models_wall_is_an_error_naming_it() {
    let ports = free_ports(1);
    for (model, max, wall) in [
        ("select", "2000", "FD_SETSIZE 1024"),
        ("thread", "30000", "RLIMIT_NOFILE"),
        ("poll", "30000", "RLIMIT_NOFILE"),
        ("iterative", "2", "one connection at a time"),
    ] {
        let (code, err) = refused(&["--model", model, "--ports", &ports, "--max-conns", max]);
        assert_eq!(code, 1, "{model}: {err}");
        assert!(
            err.contains(&format!("--model {model} holds at most")),
            "{model}: {err}"
        );
        assert!(err.contains(wall), "{model}: {err}");
    }
    let (code, err) = refused(&["--ports", &ports]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--model"), "{err}");
}

// --- fork ---

/// A process of /proc: its pid, state (`Z` a zombie) and start time (in clock ticks after
/// boot: with the pid, it names the process even if the pid is reused later).
#[derive(Debug, Clone, PartialEq)]
struct Proc {
    pid: u32,
    state: char,
    start: u64,
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces and
/// parentheses): state, ppid, ..., the start time at index 19.
fn proc_stat(pid: u32) -> Option<(Proc, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let proc = Proc {
        pid,
        state: rest[0].chars().next()?,
        start: rest[19].parse().ok()?,
    };
    Some((proc, rest[1].parse().ok()?))
}

/// The processes whose parent is `parent`, zombies included (whichever of its threads
/// forked them).
fn children_of(parent: u32) -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .filter(|(_, ppid)| *ppid == parent)
        .map(|(p, _)| p)
        .collect()
}

/// `n` connections to `port`, each echoed one byte (so its server side is being served).
fn held_connections(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&[i as u8]).unwrap();
            let mut b = [0u8];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8, "connection {i}");
            s
        })
        .collect()
}

#[test]
fn fork_serves_each_connection_in_a_child_and_leaves_no_zombie() {
    let ports = free_ports(1);
    let server = start("fork", &ports, &[]);
    let conns = held_connections(first_port(&ports), 50);
    let alive = children_of(server.pid());
    assert_eq!(alive.len(), 50, "a process per connection: {alive:?}");
    assert!(alive.iter().all(|p| p.state != 'Z'), "{alive:?}");
    // The supervisor samples the children gauge every 100 ms.
    thread::sleep(Duration::from_millis(500));
    drop(conns);
    // Each child exits at its EOF, and the server (still running) reaps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = children_of(server.pid());
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "children left 5 s after their connections closed: {left:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 50, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), 50, "{stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
    assert_eq!(
        u(&stats, "processes_max"),
        51,
        "the server and 50 children: {stats}"
    );
}

#[test]
fn fork_sigterm_with_live_connections_ends_every_child() {
    let ports = free_ports(1);
    let mut server = start("fork", &ports, &["--shutdown-timeout", "5"]);
    let conns = held_connections(first_port(&ports), 20);
    let alive = children_of(server.pid());
    assert_eq!(alive.len(), 20, "{alive:?}");
    // Well within --shutdown-timeout: the children stopped, they were not cut.
    let stats = server.stop_within(Duration::from_secs(4));
    for (i, mut s) in conns.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            s.read(&mut b).unwrap(),
            0,
            "connection {i}: EOF, owing nothing"
        );
    }
    for child in &alive {
        let now = proc_stat(child.pid).map(|(p, _)| p);
        assert!(
            now.as_ref().is_none_or(|p| p.start != child.start),
            "child {} outlived the server: {now:?}",
            child.pid
        );
    }
    assert_eq!(u(&stats, "totals.accepted"), 20, "{stats}");
    assert_eq!(
        u(&stats, "totals.closed"),
        20,
        "each child closed its own: {stats}"
    );
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
}

#[test]
fn fork_a_child_cut_at_the_deadline_dies_with_the_server() {
    let ports = free_ports(1);
    let mut server = start("fork", &ports, &["--shutdown-timeout", "0.5"]);
    let _held = held_connections(first_port(&ports), 1);
    let alive = children_of(server.pid());
    assert_eq!(alive.len(), 1, "{alive:?}");
    let child = alive[0].clone();
    // A child that cannot finish by the deadline: stopped, as surely stuck as one blocked
    // writing to a peer that does not read (and not at the mercy of the kernel's buffers).
    c1m::sys::kill(child.pid, libc::SIGSTOP).unwrap();
    let stats = server.stop_within(Duration::from_secs(5));
    assert_eq!(u(&stats, "totals.accepted"), 1, "{stats}");
    assert_eq!(
        u(&stats, "totals.closed"),
        0,
        "the connection was cut: {stats}"
    );
    // Dead (gone, or a zombie left to init) soon after the server: SIGKILL at its exit.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match proc_stat(child.pid).map(|(p, _)| p) {
            Some(p) if p.start == child.start && !matches!(p.state, 'Z' | 'X') => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "child {} outlived the server: {p:?}",
                    child.pid
                );
                thread::sleep(Duration::from_millis(20));
            }
            _ => break,
        }
    }
}

// --- thread ---

#[test]
fn thread_runs_a_thread_per_connection_and_sigterm_ends_them() {
    let ports = free_ports(1);
    let server = start("thread", &ports, &[]);
    let conns = held_connections(first_port(&ports), 100);
    let stats = server.stop();
    for (i, mut s) in conns.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            s.read(&mut b).unwrap(),
            0,
            "connection {i}: EOF, owing nothing"
        );
    }
    // The 100 connections' threads, the main thread and the accepting one.
    assert!(u(&stats, "threads_max") >= 102, "{stats}");
    assert_eq!(u(&stats, "totals.accepted"), 100, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), 100, "{stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
}

// --- select ---

/// Open fds of process `pid` below FD_SETSIZE, those that stay open: the supervisor's
/// moment-long read of /proc/self/status is left out.
fn fds_below_fd_setsize(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map_while(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|fd| fd < libc::FD_SETSIZE)
        })
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| !t.starts_with("/proc")))
        .count()
}

/// One byte there and back on `s`: true if it echoed, false if the server had closed it
/// (EOF, or the reset its close with our byte unread sends; a reset of a half-closed
/// socket reads as EPIPE).
fn echoes_or_closed(s: &mut TcpStream, byte: u8) -> bool {
    let closed =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Err(e) = s.write_all(&[byte]) {
        assert!(closed(&e), "write: {e}");
        return false;
    }
    let mut got = [0u8; 1];
    match s.read(&mut got) {
        Ok(1) => {
            assert_eq!(got[0], byte);
            true
        }
        Ok(_) => false,
        Err(e) => {
            assert!(closed(&e), "read: {e}");
            false
        }
    }
}

#[test]
fn select_refuses_fds_at_or_above_fd_setsize_cleanly_and_counted() {
    let ports = free_ports(1);
    // 1018 is the plan's maximum for one port: FD_SETSIZE less stdin, stdout, stderr, the
    // listener, the stop eventfd and the counters' memfd. The server holds at least those
    // (and whatever else it inherited), so the fds below FD_SETSIZE run out before the
    // cap is reached: every connection past them is refused, none is over the cap.
    let mut server = start("select", &ports, &["--max-conns", "1018"]);
    let free = libc::FD_SETSIZE - fds_below_fd_setsize(server.pid());
    assert!(free <= 1018, "the plan reserves too few fds: {free} free");
    // One connection at a time, each answered or closed before the next: the server takes
    // the lowest fd free each time, so it holds the first `free` and refuses the rest. A
    // read of /proc/self/status by its supervisor can take the last fd below FD_SETSIZE for
    // a moment, refusing one early; the next connection takes it then: go on until 10 in a
    // row are refused.
    let port = first_port(&ports);
    let (mut held, mut refused, mut in_a_row) = (Vec::new(), 0u64, 0);
    while in_a_row < 10 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if echoes_or_closed(&mut s, held.len() as u8) {
            held.push(s);
            in_a_row = 0;
        } else {
            refused += 1;
            in_a_row += 1;
        }
        assert!(
            held.len() + (refused as usize) < 2 * 1024,
            "the server never refused"
        );
    }
    assert_eq!(held.len(), free, "held every fd below FD_SETSIZE, no more");
    // The connections held are served as before.
    for (i, s) in held.iter_mut().enumerate().step_by(100) {
        assert!(
            echoes_or_closed(s, 0xA5 ^ i as u8),
            "connection {i} still served"
        );
    }
    let data = random_bytes(200_000, 18);
    let last = held.pop().unwrap();
    assert_eq!(echo_stream(last, data.clone()), data);
    let stats = server.stop_within(Duration::from_secs(10));
    assert_eq!(u(&stats, "totals.refused"), refused, "{stats}");
    assert_eq!(u(&stats, "totals.over_cap"), 0, "{stats}");
    assert_eq!(u(&stats, "totals.accepted"), free as u64, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), free as u64, "{stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
}

// --- poll and epoll-lt ---

/// 3,000 connections, all held at once by one thread, each answered.
fn thousands_of_connections_at_once(model: &str) {
    let ports = free_ports(2);
    let server = start(model, &ports, &[]);
    let (code, r) = server.load(&["--conns", "3000", "--duration", "1"]);
    assert_eq!(code, 0, "{model}: {r}");
    assert_eq!(u(&r, "conns_established"), 3000, "{model}: {r}");
    assert_eq!(u(&r, "conns_closed_by_peer"), 0, "{model}: {r}");
    // No request left unanswered (that is an error), so each connection's first was.
    assert!(r["errors"].as_object().unwrap().is_empty(), "{model}: {r}");
    assert!(u(&r, "requests") >= 3000, "{model}: {r}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 3000, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.closed"), 3000, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.refused"), 0, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.over_cap"), 0, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.bytes_in"), u(&stats, "totals.bytes_out"));
}

#[test]
fn poll_holds_thousands_of_connections_at_once() {
    thousands_of_connections_at_once("poll");
}

#[test]
fn epoll_lt_holds_thousands_of_connections_at_once() {
    thousands_of_connections_at_once("epoll-lt");
}

// --- sigio ---

/// Lowers running server's RLIMIT_SIGPENDING (soft and hard) to `n` with prlimit(1): at most
/// `n` signals queued for its user, then the kernel sends SIGIO instead.
fn limit_sigpending(server: &Server, n: u32) {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &server.pid().to_string(),
            &format!("--sigpending={n}"),
        ])
        .output()
        .expect("prlimit(1), of util-linux, runs");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigio_queue_overflow_falls_back_to_poll_and_serves_every_byte() {
    let ports = free_ports(2);
    let server = start("sigio", &ports, &[]);
    // 16 queued signals for 300 connections opening at once and talking: the queue fills.
    limit_sigpending(&server, 16);
    let (conns, requests, size) = (300u64, 20u64, 100u64);
    let (code, r) = server.load(&[
        "--conns",
        &conns.to_string(),
        "--requests",
        &requests.to_string(),
        "--size",
        &size.to_string(),
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "conns_established"), conns, "{r}");
    assert_eq!(
        u(&r, "requests"),
        conns * requests,
        "every request answered: {r}"
    );
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    let stats = server.stop();
    assert!(
        u(&stats, "overflows") > 0,
        "the queue never overflowed: {stats}"
    );
    let bytes = conns * requests * size;
    assert_eq!(u(&stats, "totals.bytes_in"), bytes, "{stats}");
    assert_eq!(u(&stats, "totals.bytes_out"), bytes, "{stats}");
    assert_eq!(u(&stats, "totals.accepted"), conns, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), conns, "{stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
}

// --- the thread pools ---

/// One `#[test]` per pool model for each test body `fn NAME(model: &str)`.
macro_rules! per_pool {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[test]
                fn half_sync_half_reactor() {
                    super::$case("half-sync-half-reactor")
                }
                #[test]
                fn leader_followers() {
                    super::$case("leader-followers")
                }
                #[test]
                fn sim_proactor() {
                    super::$case("sim-proactor")
                }
            }
        )+
    };
}

/// Streams `total` bytes of connection `c`'s pattern to `port` and reads the echo back while
/// it goes, checking every byte's place: a little at a time through a small receive
/// buffer, and only once everything is written (or 3 s have passed): `total` is more than
/// the server's send buffer grows to, so that by then its writes have come up short and
/// wait for EPOLLOUT (a fixed pause was not enough on a busy machine: the reader kept up).
fn slow_reader_stream(port: u16, c: usize, total: usize) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    sock.connect(&addr.into()).unwrap();
    let s = TcpStream::from(sock);
    let mut w = s.try_clone().unwrap();
    let (written, all_written) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            for (j, b) in chunk[..n].iter_mut().enumerate() {
                *b = stream_byte(c, sent + j);
            }
            w.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        w.shutdown(Shutdown::Write).unwrap();
        let _ = written.send(());
    });
    // The buffers on the way hold more than `total`, so the writer finishes; the bound is
    // for a host whose buffers are smaller.
    let _ = all_written.recv_timeout(Duration::from_secs(3));
    let (mut got, mut buf) = (0, [0u8; 1000]);
    loop {
        match (&s).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for (j, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, stream_byte(c, got + j), "conn {c} byte {}", got + j);
                }
                got += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("conn {c} after {got} bytes: {e}"),
        }
    }
    writer.join().unwrap();
    assert_eq!(got, total, "conn {c}");
}

/// Eight requests outstanding on each of 200 connections, served by eight threads: a
/// server read takes several requests, or parts of them, and any two reads of one
/// connection served out of order show as a byte that does not verify (uring-load checks
/// every echo against what it sent, in order). Meanwhile 8 slow readers stream 2 MiB more
/// than a socket's send buffer grows to (tcp_wmem's maximum) each, so that replies also
/// come up short and wait while other threads serve the rest.
fn pipelined_bytes_stay_in_order_across_many_threads(model: &str) {
    let ports = free_ports(2);
    let server = start(model, &ports, &["--threads", "8"]);
    let port = first_port(&ports);
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
    let wmem_max: usize = wmem.split_whitespace().nth(2).unwrap().parse().unwrap();
    let (slow, slow_bytes) = (8, wmem_max + (2 << 20));
    let readers: Vec<_> = (0..slow)
        .map(|c| thread::spawn(move || slow_reader_stream(port, c, slow_bytes)))
        .collect();
    let (conns, requests, size) = (200u64, 40u64, 3000u64);
    let (code, r) = server.load(&[
        "--conns",
        &conns.to_string(),
        "--depth",
        "8",
        "--size",
        &size.to_string(),
        "--requests",
        &requests.to_string(),
    ]);
    assert_eq!(code, 0, "{model}: {r}");
    assert_eq!(u(&r, "conns_established"), conns, "{model}: {r}");
    assert_eq!(u(&r, "requests"), conns * requests, "{model}: {r}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{model}: {r}");
    for r in readers {
        r.join().unwrap();
    }
    let stats = server.stop();
    let bytes = conns * requests * size + (slow * slow_bytes) as u64;
    assert_eq!(u(&stats, "totals.bytes_in"), bytes, "{model}: {stats}");
    assert_eq!(u(&stats, "totals.bytes_out"), bytes, "{model}: {stats}");
    assert!(u(&stats, "totals.short_sends") > 0, "{model}: {stats}");
    assert_eq!(
        u(&stats, "totals.closed"),
        conns + slow as u64,
        "{model}: {stats}"
    );
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{model}: {stats}");
}

/// `--threads 8` starts eight threads (the default 4, with the model's and the
/// supervisor's threads, makes at most 6).
fn the_pool_has_as_many_threads_as_asked(model: &str) {
    let ports = free_ports(1);
    let server = start(model, &ports, &["--threads", "8"]);
    let (code, r) = server.load(&["--conns", "4", "--requests", "10"]);
    assert_eq!(code, 0, "{model}: {r}");
    let stats = server.stop();
    assert!(u(&stats, "threads_max") >= 8, "{model}: {stats}");
}

per_pool!(
    pipelined_bytes_stay_in_order_across_many_threads,
    the_pool_has_as_many_threads_as_asked,
);

// --- posix-aio ---

#[test]
fn posix_aio_holds_a_glibc_thread_per_pending_read_and_the_stop_ends_them() {
    let ports = free_ports(1);
    let server = start("posix-aio", &ports, &["--shutdown-timeout", "2"]);
    let port = first_port(&ports);
    let n = 200u64;
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // One byte echoed on each, one connection after another: every one is accepted and has
    // its next read pending in a helper thread (with too few helpers, a read would wait for
    // one to free up, and this would time out).
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&*c).write_all(&[i as u8]).unwrap();
        let mut b = [0u8];
        (&*c).read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8, "connection {i}");
    }
    // The supervisor samples /proc/self/status's Threads every 100 ms.
    thread::sleep(Duration::from_millis(400));
    // The stop ends 200 reads blocked in helpers (aio_cancel cannot; shutdown does).
    let stats = server.stop();
    assert!(
        u(&stats, "threads_max") >= n,
        "a helper thread per pending read: {stats}"
    );
    assert_eq!(u(&stats, "totals.accepted"), n, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), n, "{stats}");
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
    assert_eq!(u(&stats, "totals.bytes_in"), n, "{stats}");
    assert_eq!(u(&stats, "totals.bytes_out"), n, "{stats}");
    for c in clients {
        let mut rest = Vec::new();
        (&c).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "EOF after the echo");
    }
}

// --- epoll-et and uring ---
