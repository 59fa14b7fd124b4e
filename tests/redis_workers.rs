//! `epoll-server --proto redis` above one process's fd limit: worker processes proxy their
//! Redis connections to one keyspace owner process. Forced here with an RLIMIT_NOFILE of
//! 400 (as `tests/workers.rs` does): 300 connections take 2 workers, and the owner. One
//! keyspace across the workers (which worker holds a connection is read from /proc), the
//! differential script's replies as through one process (and as Redis's, if installed),
//! pipelined and byte-split requests, QUIT and protocol errors closing only their client, a
//! killed worker's clients dropped while the others go on, the owner's death ending the
//! server, `always` under a SIGKILL of the whole process group, the access log, each
//! command counted once in the master's summary, and the memory a client that does not
//! read can hold.

mod common;
#[path = "common/redis.rs"]
mod redis_cases;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{Engine, Server, first_port, free_ports, u};
use redis_cases::Client;

/// RLIMIT_NOFILE 400: one process holds about 260 connections, so 300 need 2 workers.
const NOFILE: u32 = 400;
const CONNS: &str = "300";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("c1m-rw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Redis server through 2 workers and the owner, on `ports`.
fn start(ports: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--proto", "redis", "--max-conns", CONNS];
    args.extend(extra);
    let server = Server::start_with_nofile(Engine::Epoll, ports, &args, NOFILE);
    assert_eq!(server.children().len(), 3, "{:?}", server.children());
    server
}

/// The children of `server`: (workers, the owner).
fn roles(server: &Server) -> (Vec<u32>, u32) {
    let (mut workers, mut owner) = (Vec::new(), None);
    for pid in server.children() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let needle = b"--keyspace-owner\0";
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            owner = Some(pid);
        } else {
            workers.push(pid);
        }
    }
    (workers, owner.expect("a keyspace owner among the children"))
}

/// Which of `pids` holds the server side of `client` (from /proc/net/tcp and each
/// process's fds).
fn holder(pids: &[u32], client: &TcpStream) -> Option<u32> {
    let (mine, theirs) = (
        client.local_addr().unwrap().port(),
        client.peer_addr().unwrap().port(),
    );
    let port = |a: &str| u16::from_str_radix(a.rsplit_once(':').unwrap().1, 16).unwrap();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (port(f[1]) == theirs && port(f[2]) == mine).then(|| f[9].to_string())
    })?;
    let link = format!("socket:[{inode}]");
    pids.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_str() == Some(&link)))
    })
}

/// Clients enough that SO_REUSEPORT puts some on each of two workers (all on one: odds of
/// 2^-23; with 10 it happened in CI).
const SPREAD: usize = 24;

/// `n` clients over the ports of `ports` in turn.
fn clients(ports: &str, n: usize) -> Vec<Client> {
    let ports: Vec<u16> = ports.split(',').map(|p| p.parse().unwrap()).collect();
    (0..n)
        .map(|i| Client::connect(ports[i % ports.len()]))
        .collect()
}

/// Each client's worker; asserts every worker holds some.
fn spread(workers: &[u32], clients: &mut [Client]) -> Vec<u32> {
    let held: Vec<u32> = clients
        .iter_mut()
        .map(|c| {
            // Answered: a worker has accepted it.
            assert_eq!(c.call(&["PING"]), "+PONG\r\n");
            holder(workers, c.r.get_ref()).expect("a worker holds each connection")
        })
        .collect();
    for w in workers {
        assert!(held.contains(w), "worker {w} holds none of {held:?}");
    }
    held
}

#[test]
fn a_key_set_through_one_worker_is_read_through_every_worker() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    spread(&workers, &mut cs);
    assert_eq!(cs[0].call(&["SET", "k", "v1"]), "+OK\r\n");
    for c in &mut cs {
        assert_eq!(c.call(&["GET", "k"]), "$2\r\nv1\r\n");
        c.call(&["INCR", "n"]);
    }
    assert_eq!(cs[7].call(&["GET", "n"]), format!("$2\r\n{SPREAD}\r\n"));
    assert_eq!(cs[3].call(&["DBSIZE"]), ":2\r\n");
    let info = cs[5].call(&["INFO", "keyspace"]);
    assert!(info.contains("db0:keys=2,expires=0"), "{info}");
    drop(cs);
    server.stop();
}

/// The nice value of process `pid` (/proc/PID/stat's 19th field).
fn nice(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(") ").unwrap().1;
    after_comm.split(' ').nth(16).unwrap().parse().unwrap()
}

/// The owner runs every worker's commands: it is given the CFS weight of many workers
/// (root here; without CAP_SYS_NICE it says so and runs at theirs).
#[test]
fn the_owner_runs_at_a_higher_priority_than_the_workers() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let (workers, owner) = roles(&server);
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(nice(owner), -15);
    }
    // The workers keep the nice value they were started with (this test's).
    let ours = nice(std::process::id());
    for w in workers {
        assert_eq!(nice(w), ours);
    }
    server.stop();
}

/// The owner's socket is named in the network namespace, where any process may connect: a
/// link from another user is closed unread, and what it sent never reaches the keyspace.
#[test]
fn a_link_from_another_user_is_refused() {
    assert_eq!(
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "this test connects as another user (nobody): run it as root, as CI does"
    );
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let mut frames = Vec::new();
    c1m::reactor::frame::open(&mut frames, 1, None);
    let set = redis_cases::encode(&[b"SET", b"k", b"intruder"]);
    c1m::reactor::frame::data(&mut frames, 1, &set);
    let hex: String = frames.iter().map(|b| format!("{b:02x}")).collect();
    let name = c1m::reactor::link::socket_name(server.pid());
    // The owner closes the link unread: EOF, a reset for the bytes it never read, or (closed
    // before they were sent) a broken pipe.
    let script = [
        "import socket, sys",
        "s = socket.socket(socket.AF_UNIX)",
        "s.connect('\\0' + sys.argv[1])",
        "s.settimeout(5)",
        "try:",
        "    s.sendall(bytes.fromhex(sys.argv[2]))",
        "    print(len(s.recv(100)))",
        "except (BrokenPipeError, ConnectionResetError):",
        "    print(0)",
    ]
    .join("\n");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &script, &name, &hex])
        .output()
        .expect("run setpriv (util-linux) and /usr/bin/python3");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{out:?}");
    let mut c = Client::connect(first_port(&ports));
    assert_eq!(c.call(&["GET", "k"]), "$-1\r\n");
    drop(c);
    let stats = server.stop();
    assert_eq!(stats["totals"]["refused"].as_u64(), Some(1), "{stats}");
}

/// The differential script through the workers: byte for byte Redis's replies where
/// redis-server is installed, and one process's replies (themselves checked against Redis
/// by `tests/redis_diff.rs`) in any case.
#[test]
fn the_differential_script_replies_as_one_process_and_redis_do() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let single_ports = free_ports(1);
    let single = Server::start(
        Engine::Epoll,
        &single_ports,
        &["--proto", "redis", "--cores", "2"],
    );
    let redis = common::installed("redis-server --version", "redis-server", "redis-server")
        .then(redis_cases::Redis::start);
    let through: Vec<u16> = ports.split(',').map(|p| p.parse().unwrap()).collect();
    let mut bad = Vec::new();
    for (i, case) in redis_cases::cases().iter().enumerate() {
        let port = through[i % through.len()];
        let ours = redis_cases::run_tcp((Ipv4Addr::LOCALHOST, port).into(), case);
        let one = redis_cases::run_tcp(
            (Ipv4Addr::LOCALHOST, common::first_port(&single_ports)).into(),
            case,
        );
        bad.extend(redis_cases::compare_case(case, &ours, &one));
        if let Some(r) = &redis {
            let theirs = redis_cases::run_tcp((Ipv4Addr::LOCALHOST, r.port).into(), case);
            bad.extend(
                redis_cases::compare_case(case, &ours, &theirs)
                    .into_iter()
                    .map(|d| format!("vs Redis: {d}")),
            );
        }
    }
    single.stop();
    server.stop();
    assert!(
        bad.is_empty(),
        "{} differences:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// 6,000 commands (about 170 KB) in one write, and a request sent one byte at a time: every reply, in
/// order, on connections of both workers.
#[test]
fn pipelined_and_byte_split_requests_are_answered_in_order() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    spread(&workers, &mut cs);
    for (n, c) in cs.iter_mut().enumerate() {
        let mut batch = Vec::new();
        let mut want = String::new();
        for i in 0..3000 {
            let (k, v) = (format!("p{n}:{i}"), format!("v{i}"));
            batch.extend(redis_cases::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
            batch.extend(redis_cases::encode(&[b"GET", k.as_bytes()]));
            want += &format!("+OK\r\n${}\r\n{v}\r\n", v.len());
        }
        c.r.get_mut().write_all(&batch).unwrap();
        let mut got = String::new();
        while got.len() < want.len() {
            got += &c.reply().unwrap();
        }
        assert_eq!(got, want, "client {n}");
        let req = redis_cases::encode(&[b"ECHO", b"split"]);
        for b in &req {
            c.r.get_mut().write_all(&[*b]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(c.reply().unwrap(), "$5\r\nsplit\r\n");
    }
    drop(cs);
    server.stop();
}

/// QUIT and a protocol error close their own client after its reply; every other client,
/// on either worker, goes on.
#[test]
fn quit_and_a_protocol_error_close_only_their_client() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    let held = spread(&workers, &mut cs);
    // A QUIT and a protocol error on each worker.
    let quit = (0..cs.len()).find(|&i| held[i] == workers[0]).unwrap();
    let bad = (0..cs.len()).find(|&i| held[i] == workers[1]).unwrap();
    cs[quit].send(&["QUIT"]).unwrap();
    assert_eq!(cs[quit].reply().unwrap(), "+OK\r\n");
    assert_eq!(cs[quit].closed(), Some(Vec::new()), "QUIT closes");
    cs[bad]
        .r
        .get_mut()
        .write_all(b"*1\r\n$x\r\nPING\r\n")
        .unwrap();
    assert_eq!(
        cs[bad].closed().map(String::from_utf8),
        Some(Ok("-ERR Protocol error: invalid bulk length\r\n".into()))
    );
    for (i, c) in cs.iter_mut().enumerate() {
        if i != quit && i != bad {
            assert_eq!(c.call(&["PING"]), "+PONG\r\n", "client {i}");
        }
    }
    drop(cs);
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), SPREAD as u64, "{stats}");
    assert_eq!(u(&stats, "totals.closed"), SPREAD as u64, "{stats}");
}

/// A worker killed: its clients are cut, the owner drops them, the others (and the
/// keyspace) go on, and the restarted worker serves the same keyspace.
#[test]
fn a_killed_worker_s_clients_are_dropped_while_the_others_go_on() {
    let ports = free_ports(2);
    let mut server = start(&ports, &[]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    let held = spread(&workers, &mut cs);
    assert_eq!(cs[0].call(&["SET", "k", "kept"]), "+OK\r\n");
    let victim = workers[0];
    // A worker of the server this test started, listed alive just now.
    c1m::sys::kill(victim, libc::SIGKILL).expect("kill the worker");
    server
        .stderr_line("died", Duration::from_secs(5))
        .expect("the master reports the dead worker");
    for (i, c) in cs.iter_mut().enumerate() {
        if held[i] == victim {
            let r = c.send(&["PING"]).and_then(|()| c.reply());
            assert!(
                r.is_err(),
                "client {i} of the killed worker was answered: {r:?}"
            );
        } else {
            assert_eq!(c.call(&["GET", "k"]), "$4\r\nkept\r\n", "client {i}");
        }
    }
    server
        .stderr_line("restarted", Duration::from_secs(5))
        .expect("the master restarts it");
    // The restarted worker connects to the owner again: new clients reach both workers.
    thread::sleep(Duration::from_millis(200));
    let (workers, _) = roles(&server);
    let mut fresh = clients(&ports, SPREAD);
    spread(&workers, &mut fresh);
    for c in &mut fresh {
        assert_eq!(c.call(&["GET", "k"]), "$4\r\nkept\r\n");
    }
    drop((cs, fresh));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(1));
}

/// The owner killed: the keyspace is gone, so the master ends the server, exit 1, and says
/// why.
#[test]
fn the_owner_s_death_ends_the_server() {
    let ports = free_ports(2);
    let mut server = start(&ports, &[]);
    let (workers, owner) = roles(&server);
    // The owner of the server this test started, listed alive just now.
    c1m::sys::kill(owner, libc::SIGKILL).expect("kill the owner");
    let line = server
        .stderr_line("keyspace owner (pid", Duration::from_secs(5))
        .expect("the master says the owner died");
    assert!(line.contains("not restarted"), "{line}");
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(1));
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "worker {pid} outlived the server"
        );
    }
}

/// `--appendfsync always`, SIGKILL of the whole process group (master, workers, owner) under
/// writes from 8 clients: after a restart on the same file, every acknowledged SET is there.
#[test]
fn always_loses_no_acknowledged_set_when_the_whole_group_is_killed() {
    let dir = temp_dir("always");
    let aof = dir.join("appendonly.aof");
    let aof = aof.to_str().unwrap();
    let ports = free_ports(2);
    let flags = ["--appendonly", aof, "--appendfsync", "always"];
    let server = start_grouped(&ports, &flags);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (stop, ports) = (stop.clone(), ports.clone());
            thread::spawn(move || {
                let mut c = clients(&ports, t + 1).pop().unwrap();
                let mut acked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let ok = c
                        .send(&["SET", &format!("w{t}:{acked}"), &format!("v{acked}")])
                        .and_then(|()| c.reply());
                    match ok {
                        Ok(r) if r == "+OK\r\n" => acked += 1,
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1000));
    assert!(
        kill_group(&server.0, libc::SIGKILL),
        "the server's group is gone"
    );
    let mut server = server;
    let _ = server.0.wait();
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<usize> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        acked.iter().sum::<usize>() > 100,
        "too few writes: {acked:?}"
    );
    let again = start(&ports, &flags);
    let mut c = clients(&ports, 1).pop().unwrap();
    for (t, &n) in acked.iter().enumerate() {
        for i in 0..n {
            let v = format!("v{i}");
            assert_eq!(
                c.call(&["GET", &format!("w{t}:{i}")]),
                format!("${}\r\n{v}\r\n", v.len()),
                "w{t}:{i}, acknowledged, is lost"
            );
        }
    }
    drop(c);
    again.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server in a process group of its own, so the whole group can be killed at once.
struct Grouped(std::process::Child);

impl Drop for Grouped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill_group(&self.0, libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// Sends `sig` to every process of `child`'s group; false if there is none.
fn kill_group(child: &std::process::Child, sig: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals that process group: the one made for
    // this server at spawn (`start_grouped`, process_group(0)), holding only its processes.
    unsafe { libc::kill(-(child.id() as i32), sig) == 0 }
}

fn start_grouped(ports: &str, extra: &[&str]) -> Grouped {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_epoll-server"),
        ])
        .args([
            "--proto",
            "redis",
            "--max-conns",
            CONNS,
            "--host",
            "127.0.0.1",
        ])
        .args(["--ports", ports])
        .args(extra)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.starts_with("listening on ") {
        line.clear();
    }
    assert!(line.starts_with("listening on "), "not ready: {line:?}");
    // Keep reading its stdout, so its lines never block it.
    thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Grouped(child)
}

/// One line per command in the owner's access log, with the client's address, whichever
/// worker the client came through.
#[test]
fn the_access_log_has_a_line_per_command_through_workers() {
    let dir = temp_dir("log");
    let log = dir.join("access.log");
    let ports = free_ports(2);
    let server = start(&ports, &["--access-log", log.to_str().unwrap()]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    spread(&workers, &mut cs);
    for (i, c) in cs.iter_mut().enumerate() {
        assert_eq!(c.call(&["SET", &format!("k{i}"), "v"]), "+OK\r\n");
        assert!(c.call(&["NOSUCH"]).starts_with("-ERR unknown command"));
    }
    drop(cs);
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // `spread`'s PING, a SET and an unknown command from each client.
    assert_eq!(lines.len(), 3 * SPREAD, "{text}");
    for i in 0..SPREAD {
        let set = format!("\"SET k{i} v\" OK 5 ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("127.0.0.1 - - [") && l.contains(&set)),
            "no line for SET k{i}: {text}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("\"NOSUCH\" ERR "))
            .count(),
        SPREAD
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The master's summary: the workers count the connections and bytes, the owner the
/// commands, each once.
#[test]
fn the_master_s_summary_counts_each_command_once() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let (workers, _) = roles(&server);
    let mut cs = clients(&ports, SPREAD);
    spread(&workers, &mut cs);
    // `spread`'s PING on each, and 7 more.
    let mut bytes_out = SPREAD as u64 * 7;
    for c in &mut cs {
        for _ in 0..7 {
            bytes_out += c.call(&["PING"]).len() as u64;
        }
    }
    drop(cs);
    thread::sleep(Duration::from_millis(200));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.requests"), SPREAD as u64 * 8, "{stats}");
    assert_eq!(u(&stats, "totals.accepted"), SPREAD as u64, "{stats}");
    assert_eq!(u(&stats, "totals.bytes_out"), bytes_out, "{stats}");
    let per = stats["per_shard"].as_array().unwrap();
    assert_eq!(per.len(), 3, "two workers and the owner: {stats}");
    // The owner (last) ran every command and accepted no client.
    assert_eq!(u(&per[2], "requests"), SPREAD as u64 * 8, "{stats}");
    assert_eq!(u(&per[2], "accepted"), 0, "{stats}");
}

/// The RSS of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A client that sends 1 MiB of GETs of a 4 KiB value (190 MB of replies) and reads none
/// for a while: the worker forwards a read only once the owner ran the last and its
/// replies are written, so no process holds more than about one read's replies (12 MB);
/// then every reply arrives, in order.
#[test]
fn a_client_that_does_not_read_holds_at_most_about_one_read_of_replies() {
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let mut c = clients(&ports, 1).pop().unwrap();
    let value = "x".repeat(4096);
    assert_eq!(c.call(&["SET", "k", &value]), "+OK\r\n");
    let get = redis_cases::encode(&[b"GET", b"k"]);
    let n = (1 << 20) / get.len();
    let mut w = c.r.get_ref().try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&get.repeat(n)));
    thread::sleep(Duration::from_millis(1000));
    for pid in server.children() {
        assert!(rss(pid) < 100 << 20, "pid {pid} holds {} bytes", rss(pid));
    }
    let reply = format!("$4096\r\n{value}\r\n");
    let mut buf = vec![0; reply.len()];
    for i in 0..n {
        c.r.read_exact(&mut buf).unwrap();
        assert!(buf == reply.as_bytes(), "reply {i}");
    }
    writer.join().unwrap().unwrap();
    drop(c);
    server.stop();
}

/// redis-benchmark's default run (every command it tries, 20 clients) through the workers:
/// no error, and the summary counts every command it sent.
#[test]
fn redis_benchmark_default_run_has_no_errors_through_workers() {
    if !common::installed(
        "command -v redis-benchmark",
        "redis-benchmark",
        "redis-tools",
    ) {
        return;
    }
    let ports = free_ports(2);
    let server = start(&ports, &[]);
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", ports.split(',').next().unwrap()])
        .args(["-q", "-n", "1000", "-c", "20"])
        .output()
        .expect("run redis-benchmark");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let rates = text.matches("requests per second").count();
    assert!(rates >= 15, "a test is missing: {text}");
    assert!(!text.to_lowercase().contains("err"), "{text}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.conn_errors"), 0, "{stats}");
    // 1,000 commands a test, and its CONFIG GETs of save and appendonly at the start.
    assert_eq!(
        u(&stats, "totals.requests"),
        1000 * rates as u64 + 2,
        "{stats}"
    );
}
