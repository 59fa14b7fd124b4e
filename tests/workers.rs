//! The Reactor's worker processes: planned when one process's fd limit cannot hold the
//! target; the master reports a worker that dies, restarts it, gives its share of the
//! connection cap back, and stops all on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{Engine, Server, first_port, free_ports, load, u};

/// 40,000 connections need more fds than one process may hold here: 4 workers on 2 cores.
const WORKER_TARGET: &str = "40000";

/// Connection `i` of a test, to one of `ports` in turn, with "hi" sent on it.
fn open(ports: &str, i: usize) -> std::net::TcpStream {
    use std::io::Write;
    let n = ports.split(',').count();
    let port: u16 = ports.split(',').nth(i % n).unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hi").unwrap();
    s
}

/// Whether the "hi" came back (false: the connection was closed, or cut, first).
fn served(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 2];
    s.read_exact(&mut b).is_ok() && &b == b"hi"
}

/// Stops a server one of whose workers died: it exits 1 (connections were lost); its stats.
fn stop_after_a_death(server: &mut Server) -> serde_json::Value {
    server.signal(libc::SIGTERM);
    let st = server.wait(Duration::from_secs(10));
    assert_eq!(
        st.code(),
        Some(1),
        "a worker died: the run did not end cleanly"
    );
    serde_json::from_str(&std::fs::read_to_string(&server.stats_path).unwrap()).unwrap()
}

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

/// A master killed outright (SIGKILL: nothing forwarded) leaves no worker serving on: each
/// sees its stdin end and stops as on SIGTERM.
#[test]
fn workers_stop_when_their_master_is_killed() {
    let ports = free_ports(2);
    let mut server = Server::start(Engine::Epoll, &ports, &["--max-conns", WORKER_TARGET]);
    let workers = server.children();
    assert_eq!(workers.len(), 4, "workers: {workers:?}");
    server.signal(libc::SIGKILL);
    server.wait(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived its killed master");
    }
}

#[test]
fn a_killed_worker_is_reported_and_restarted_and_the_others_go_on() {
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
    let line = server
        .stderr_line("restarted", Duration::from_secs(5))
        .expect("the master restarts it");
    assert!(line.contains("worker 1 restarted (pid "), "{line}");
    let now = server.children();
    assert_eq!(now.len(), 4, "{now:?}");
    let kept = workers.iter().filter(|p| **p != victim);
    assert!(!now.contains(&victim), "{now:?}");
    assert!(
        kept.clone().all(|p| now.contains(p)),
        "{workers:?} -> {now:?}"
    );
    // New connections go to every worker, the restarted one too (once it listens).
    std::thread::sleep(Duration::from_millis(300));
    let (code, r) = load(&ports, &["--conns", "300", "--requests", "3"]);
    assert_eq!(code, 0, "{r}");
    let stats = stop_after_a_death(&mut server);
    assert_eq!(stats["died"], serde_json::json!([1]));
    assert_eq!(stats["restarted"], serde_json::json!([1]));
    assert_eq!(u(&stats, "totals.accepted"), 300);
    let restarted_served = stats["per_shard"][1]["accepted"].as_u64().unwrap();
    assert!(restarted_served > 0, "the restarted worker served: {stats}");
    for pid in workers.iter().chain(&now) {
        assert!(!alive(*pid), "worker {pid} outlived the master");
    }
}

/// SIGHUP to the master of worker processes: it reads the `--config` file again and hands
/// the new settings to its workers (one line on each one's stdin); a worker restarted after
/// that starts with them too. Checked by the idle timeout of connections to every worker.
#[test]
fn sighup_reaches_every_worker_and_a_restarted_one() {
    use std::io::Read;
    let path = std::env::temp_dir().join(format!("c1m-hup-workers-{}.toml", std::process::id()));
    let p = path.to_str().unwrap().to_string();
    std::fs::write(&path, "idle-timeout = 100\n").unwrap();
    let ports = free_ports(2);
    let mut server = Server::start(
        Engine::Epoll,
        &ports,
        &["--config", &p, "--max-conns", WORKER_TARGET],
    );
    let workers = server.children();
    assert!(workers.len() > 1, "{workers:?}");
    std::fs::write(&path, "idle-timeout = 1\nsend-timeout = 30\n").unwrap();
    server.signal(libc::SIGHUP);
    let applied = server
        .stderr_line("SIGHUP: applied", Duration::from_secs(5))
        .expect("the master says what it applied");
    assert!(
        applied.contains("idle-timeout = 1 (was 100), send-timeout = 30 (was 60)"),
        "{applied}"
    );
    // A worker of the server this test started, listed alive just now.
    c1m::sys::kill(workers[0], libc::SIGKILL).expect("kill a worker");
    server
        .stderr_line("restarted", Duration::from_secs(5))
        .expect("the master restarts it");
    std::thread::sleep(Duration::from_millis(300));
    // Enough connections that SO_REUSEPORT gives each worker some (all on one of four:
    // 4 * 4^-16).
    let t = Instant::now();
    let mut conns: Vec<std::net::TcpStream> = (0..16)
        .map(|i| {
            let port = first_port(&ports) + (i % 2);
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    for s in &mut conns {
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by the server");
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "every connection was cut after the new idle timeout: {took:?}"
    );
    let stats = stop_after_a_death(&mut server);
    assert_eq!(u(&stats, "totals.idle_timeouts"), 16, "{stats}");
    let per_shard = stats["per_shard"].as_array().unwrap();
    assert!(
        per_shard
            .iter()
            .filter(|s| s["idle_timeouts"].as_u64() > Some(0))
            .count()
            > 1,
        "{stats}"
    );
    let _ = std::fs::remove_file(&path);
}

/// A worker that dies takes its connections with it, and the master gives its share of
/// `--max-conns` back: as many new connections as died are let in, and not one more.
#[test]
fn a_dead_worker_s_share_of_the_cap_is_given_back() {
    use std::io::Write;
    use std::net::TcpStream;
    let ports = free_ports(2);
    let mut server = Server::start_with_nofile(Engine::Epoll, &ports, &["--max-conns", "300"], 400);
    let workers = server.children();
    assert_eq!(workers.len(), 2);
    let open = |i: usize| open(&ports, i);
    let mut held: Vec<TcpStream> = (0..300).map(open).collect();
    assert!(
        held.iter_mut().all(served),
        "connections under the cap were refused"
    );
    c1m::sys::kill(workers[0], libc::SIGKILL).expect("kill the worker");
    server
        .stderr_line("restarted", Duration::from_secs(5))
        .expect("the master restarts it");
    std::thread::sleep(Duration::from_millis(300));
    // The dead worker's connections are gone: a write and a read find them closed.
    let lost = held
        .iter_mut()
        .map(|s| s.write_all(b"hi").is_err() || !served(s))
        .filter(|&gone| gone)
        .count();
    assert!(lost > 0 && lost < 300, "{lost} of 300 lost");
    let mut again: Vec<TcpStream> = (0..lost).map(open).collect();
    assert!(
        again.iter_mut().all(served),
        "the dead worker's share was not given back"
    );
    let mut over = open(lost);
    assert!(!served(&mut over), "a connection over the cap was served");
    drop((held, again, over));
    stop_after_a_death(&mut server);
}

/// `--max-conns` holds across worker processes (they count in one shared counter), however
/// SO_REUSEPORT spreads the connections: exactly the cap is held, the next is closed at once.
#[test]
fn the_connection_cap_holds_across_workers() {
    use std::net::TcpStream;
    let ports = free_ports(2);
    // RLIMIT_NOFILE 400: one process holds about 260 connections, so 300 need 2 workers,
    // each with fd room for about 265: far more than an even share (150) of the cap.
    let server = Server::start_with_nofile(Engine::Epoll, &ports, &["--max-conns", "300"], 400);
    assert_eq!(server.children().len(), 2, "{:?}", server.children());
    let open = |i: usize| open(&ports, i);
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

/// A worker that keeps dying is restarted with a growing delay, and given up on after 5
/// deaths within 10 s, nginx style; the others go on serving.
#[test]
fn a_worker_that_keeps_dying_is_given_up_on() {
    let ports = free_ports(2);
    let mut server = Server::start_with_nofile(Engine::Epoll, &ports, &["--max-conns", "300"], 400);
    let mut pids = server.children();
    assert_eq!(pids.len(), 2);
    let other = pids[1];
    let mut victim = pids[0];
    for round in 1..=5 {
        c1m::sys::kill(victim, libc::SIGKILL).expect("kill the worker");
        if round == 5 {
            break;
        }
        server
            .stderr_line("restarted", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("restart {round}"));
        let now = server.children();
        victim = *now
            .iter()
            .find(|p| !pids.contains(p))
            .expect("a new worker");
        pids = now;
    }
    let line = server
        .stderr_line("not restarted again", Duration::from_secs(5))
        .expect("the master gives up");
    assert!(line.contains("died 5 times within 10s"), "{line}");
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(server.children(), vec![other], "no sixth start");
    let (code, r) = load(&ports, &["--conns", "50", "--requests", "2"]);
    assert_eq!(code, 0, "the other worker serves: {r}");
    let stats = stop_after_a_death(&mut server);
    assert_eq!(stats["died"], serde_json::json!([0, 0, 0, 0, 0]));
    assert_eq!(stats["restarted"], serde_json::json!([0, 0, 0, 0]));
}
