//! The Reactor's worker processes: planned when one process's fd limit cannot hold the
//! target; the master reports a worker that dies and stops all on SIGTERM.

mod common;

use std::time::Duration;

use common::{Engine, Server, free_ports, load, u};

/// 40,000 connections need more fds than one process may hold here: 4 workers on 2 cores.
const WORKER_TARGET: &str = "40000";

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn sigterm_stops_every_worker_and_sums_their_stats() {
    let ports = free_ports(2);
    let server = Server::start(
        Engine::Epoll,
        &ports,
        &["--max-conns", WORKER_TARGET, "--batch-usec", "300"],
    );
    let workers = server.children();
    assert_eq!(workers.len(), 4, "workers: {workers:?}");
    const NEEDLE: &[u8] = b"--batch-usec\x00300\x00";
    for pid in &workers {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            cmdline.windows(NEEDLE.len()).any(|w| w == NEEDLE),
            "worker {pid} was not given --batch-usec: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    let (code, r) = load(
        &ports,
        &["--conns", "400", "--requests", "5", "--size", "100"],
    );
    assert_eq!(code, 0, "{r}");
    let stats = server.stop();
    assert_eq!(u(&stats, "shards"), 4);
    assert_eq!(stats["per_shard"].as_array().unwrap().len(), 4);
    assert_eq!(u(&stats, "totals.accepted"), 400);
    assert_eq!(u(&stats, "totals.closed"), 400);
    assert_eq!(u(&stats, "totals.bytes_out"), 400 * 5 * 100);
    assert!(stats["died"].as_array().unwrap().is_empty());
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the master");
    }
}

#[test]
fn a_killed_worker_is_reported_and_the_others_go_on() {
    let ports = free_ports(2);
    let mut server = Server::start(Engine::Epoll, &ports, &["--max-conns", WORKER_TARGET]);
    let workers = server.children();
    assert_eq!(workers.len(), 4);
    let victim = workers[1];
    // A worker of the server this test started, listed alive just now.
    c1m::sys::kill(victim, libc::SIGKILL).expect("kill the worker");
    let line = server
        .stderr_line("died", Duration::from_secs(5))
        .expect("the master reports the dead worker");
    assert!(line.contains(&format!("pid {victim}")), "{line}");
    assert!(line.contains("signal: 9"), "{line}");
    // Its listeners closed with it: new connections go to the other workers.
    let (code, r) = load(&ports, &["--conns", "300", "--requests", "3"]);
    assert_eq!(code, 0, "{r}");
    server.signal(libc::SIGTERM);
    let st = server.wait(Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(1),
        "a worker died: the run did not end cleanly"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.stats_path).unwrap()).unwrap();
    assert_eq!(stats["died"], serde_json::json!([1]));
    assert_eq!(u(&stats, "totals.accepted"), 300);
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the master");
    }
}

/// `--max-conns` holds across worker processes (they count in one shared counter), however
/// SO_REUSEPORT spreads the connections: exactly the cap is held, the next is closed at once.
#[test]
fn the_connection_cap_holds_across_workers() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let ports = free_ports(2);
    // RLIMIT_NOFILE 400: one process holds about 260 connections, so 300 need 2 workers,
    // each with fd room for about 265: far more than an even share (150) of the cap.
    let server = Server::start_with_nofile(Engine::Epoll, &ports, &["--max-conns", "300"], 400);
    assert_eq!(server.children().len(), 2, "{:?}", server.children());
    let port = |i: usize| -> u16 { ports.split(',').nth(i % 2).unwrap().parse().unwrap() };
    let open = |i: usize| {
        let mut s = TcpStream::connect(("127.0.0.1", port(i))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hi").unwrap();
        s
    };
    let served = |s: &mut TcpStream| {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).is_ok() && &b == b"hi"
    };
    let mut held: Vec<TcpStream> = (0..300).map(open).collect();
    let refused = held.iter_mut().map(|s| !served(s)).filter(|r| *r).count();
    assert_eq!(refused, 0, "connections under the cap were refused");
    let mut over = open(300);
    assert!(!served(&mut over), "the connection over the cap was served");
    drop(over);
    held.truncate(290);
    std::thread::sleep(Duration::from_millis(300));
    let mut again: Vec<TcpStream> = (0..10).map(open).collect();
    assert!(again.iter_mut().all(served), "the cap did not recover");
    drop(held);
    drop(again);
    std::thread::sleep(Duration::from_millis(300));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.over_cap"), 1, "{stats}");
    assert_eq!(u(&stats, "totals.accepted"), 310, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), 310, "{stats}");
}
