//! `--access-log` against both engines, with real files: a line per echo connection,
//! field by field; none lost at SIGTERM under load, nor at a rotation (SIGUSR1) under load;
//! a file that cannot be opened is an error at start; a full disk is said once, counted,
//! and serving goes on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Server, Target, first_port, free_ports, load, u};

/// A fresh directory for one test's logs.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("c1m-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts a server for `t` that logs to `path`, with `extra` flags.
fn start_logging(t: impl Into<Target>, ports: &str, path: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--access-log", path.to_str().unwrap()];
    args.extend(extra);
    Server::start(t, ports, &args)
}

/// Checks one echo line, nginx stream's basic format:
/// `127.0.0.1 [01/Dec/2026:12:40:00 +0000] TCP 200 640 640 0.012`.
fn check_echo_line(line: &str, peer: &str, bytes: u64) {
    let (addr, rest) = line.split_once(" [").unwrap_or_else(|| panic!("{line:?}"));
    assert_eq!(addr, peer, "{line:?}");
    let (time, rest) = rest.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
    // dd/Mon/yyyy:hh:mm:ss +zzzz
    let b = time.as_bytes();
    assert_eq!(time.len(), 26, "{line:?}");
    assert!(b[..2].iter().all(u8::is_ascii_digit), "{line:?}");
    assert!(
        [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
        ]
        .contains(&&time[3..6]),
        "{line:?}"
    );
    assert_eq!(
        (b[2], b[6], b[11], b[14], b[17], b[20]),
        (b'/', b'/', b':', b':', b':', b' ')
    );
    assert!(b[21] == b'+' || b[21] == b'-', "{line:?}");
    let fields: Vec<&str> = rest.split(' ').collect();
    assert_eq!(fields.len(), 5, "{line:?}");
    assert_eq!((fields[0], fields[1]), ("TCP", "200"), "{line:?}");
    assert_eq!(fields[2], bytes.to_string(), "bytes sent: {line:?}");
    assert_eq!(fields[3], bytes.to_string(), "bytes received: {line:?}");
    let (s, ms) = fields[4]
        .split_once('.')
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        s.parse::<u64>().is_ok() && ms.len() == 3 && ms.parse::<u32>().is_ok(),
        "{line:?}"
    );
}

/// A line per echo connection at its close, each field as it should be, over IPv4 and IPv6.
fn echo_logs_a_line_per_connection(t: Target) {
    let dir = temp_dir(&format!("echo-{t}").replace(' ', "-"));
    let path = dir.join("access.log");
    let ports = free_ports(2);
    let server = start_logging(t, &ports, &path, &[]);
    let (code, r) = server.load(&["--conns", "50", "--requests", "10"]);
    assert_eq!(code, 0, "{t}: {r}");
    let stats = server.stop();
    let got = lines(&path);
    assert_eq!(got.len(), 50, "{t}: {got:?}");
    assert_eq!(u(&stats, "totals.log_lines"), 50, "{stats}");
    assert_eq!(u(&stats, "totals.log_errors"), 0, "{stats}");
    assert!(u(&stats, "totals.log_writes") >= 1, "{stats}");
    let bytes: u64 = got.iter().map(|l| l.len() as u64 + 1).sum();
    assert_eq!(u(&stats, "totals.log_bytes"), bytes, "{stats}");
    let peer = t.host().to_string();
    for line in &got {
        check_echo_line(line, &peer, 10 * 64);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(ipv4_and_ipv6: echo_logs_a_line_per_connection);

/// Connections that come and go, one at a time per thread, until `stop`: counted as closed.
fn churn(ports: &str, threads: usize, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<u64>> {
    let port = first_port(ports);
    (0..threads)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        break;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut back = [0u8; 5];
                    if s.write_all(b"hello").is_err() || s.read_exact(&mut back).is_err() {
                        break;
                    }
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// Keep-alive HTTP clients, one request at a time each, until `stop` (or the server goes):
/// the answers each read whole.
fn http_clients(ports: &str, n: usize, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<u64>> {
    let port = first_port(ports);
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut answer = [0u8; 128];
                    let ok = s
                        .write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n")
                        .and_then(|()| s.read_exact(&mut answer));
                    if ok.is_err() {
                        break;
                    }
                    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// SIGTERM under load, with a small buffer (many batches, so some are in flight at the
/// stop): echo connections that come and go, or HTTP keep-alive requests. Every connection
/// the server closed (echo), or request it answered (HTTP), has its line.
fn sigterm_under_load_loses_no_line(engine: Engine, http: bool) {
    let dir = temp_dir(&format!("term-{engine:?}-{http}"));
    let path = dir.join("access.log");
    let ports = free_ports(1);
    let proto = if http { "http" } else { "echo" };
    let extra = ["--access-log-buffer", "512", "--proto", proto];
    let server = start_logging(engine, &ports, &path, &extra);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = if http {
        http_clients(&ports, 8, stop.clone())
    } else {
        churn(&ports, 4, stop.clone())
    };
    thread::sleep(Duration::from_millis(1500));
    let stats = server.stop();
    stop.store(true, Ordering::Relaxed);
    let done: u64 = clients.into_iter().map(|w| w.join().unwrap()).sum();
    let got = lines(&path);
    assert!(
        done > 100,
        "{engine:?}: only {done} connections or requests"
    );
    let logged = if http {
        "totals.requests"
    } else {
        "totals.closed"
    };
    assert_eq!(got.len() as u64, u(&stats, logged), "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.log_lines"), got.len() as u64, "{stats}");
    if http {
        // Each answer the clients read whole is one of them.
        assert_eq!(got.len() as u64, done, "{engine:?}: {stats}");
    }
    for line in got.iter().filter(|_| !http) {
        let bytes = line.split(' ').nth(5).unwrap();
        assert!(bytes == "5" || bytes == "0", "{engine:?}: {line:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sigterm_under_echo_load_loses_no_line(engine: Engine) {
    sigterm_under_load_loses_no_line(engine, false);
}

fn sigterm_under_http_load_loses_no_line(engine: Engine) {
    sigterm_under_load_loses_no_line(engine, true);
}

common::per_engine!(
    sigterm_under_echo_load_loses_no_line,
    sigterm_under_http_load_loses_no_line
);

/// Rotation, nginx's way, while connections come and go: `mv access.log access.log.1`,
/// SIGUSR1, and the lines go on in a new access.log; the two files hold one line per
/// connection closed, none lost, none twice.
fn sigusr1_rotates_under_load_losing_and_doubling_none(engine: Engine) {
    let dir = temp_dir(&format!("rotate-{engine:?}"));
    let path = dir.join("access.log");
    let old = dir.join("access.log.1");
    let ports = free_ports(1);
    let server = start_logging(engine, &ports, &path, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = churn(&ports, 4, stop.clone());
    thread::sleep(Duration::from_millis(1200));
    std::fs::rename(&path, &old).unwrap();
    server.signal(libc::SIGUSR1);
    thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    thread::sleep(Duration::from_millis(200));
    let stats = server.stop();
    let (before, after) = (lines(&old), lines(&path));
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{engine:?}: {} lines before the rotation, {} after",
        before.len(),
        after.len()
    );
    assert_eq!(
        (before.len() + after.len()) as u64,
        u(&stats, "totals.closed"),
        "{engine:?}: {stats}"
    );
    assert_eq!(u(&stats, "totals.closed"), done, "{engine:?}: {stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(sigusr1_rotates_under_load_losing_and_doubling_none);

/// A log that cannot be opened is an error at start, naming the file: both engines, and the
/// Reactor's master with worker processes.
fn a_log_that_cannot_be_opened_is_an_error_at_start(engine: Engine) {
    for extra in [&[][..], &["--max-conns", "40000"][..]] {
        let out = std::process::Command::new(engine.binary())
            .args(["--host", "127.0.0.1", "--ports", &free_ports(1)])
            .args(["--access-log", "/nonexistent-dir/access.log"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{engine:?} {extra:?}: {err}");
        assert!(
            err.contains("--access-log /nonexistent-dir/access.log")
                && err.contains("No such file or directory"),
            "{engine:?} {extra:?}: {err}"
        );
    }
}

common::per_engine!(a_log_that_cannot_be_opened_is_an_error_at_start);

/// The Reactor's worker processes all append to the one file: a line per connection, whole.
#[test]
fn epoll_workers_share_the_log() {
    let dir = temp_dir("workers");
    let path = dir.join("access.log");
    let ports = free_ports(2);
    let server = start_logging(Engine::Epoll, &ports, &path, &["--max-conns", "40000"]);
    assert!(server.children().len() > 1);
    let (code, r) = load(&ports, &["--conns", "400", "--requests", "2"]);
    assert_eq!(code, 0, "{r}");
    let stats = server.stop();
    let got = lines(&path);
    assert_eq!(got.len(), 400, "{stats}");
    for line in &got {
        check_echo_line(line, "127.0.0.1", 2 * 64);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk that fills mid-run (a 64 KiB tmpfs): the failed write is said once on stderr and
/// counted, and serving goes on.
fn a_full_disk_is_said_once_and_serving_goes_on(engine: Engine) {
    let dir = temp_dir(&format!("full-{engine:?}"));
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and can mount a tmpfs"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    }
    let path = dir.join("access.log");
    let ports = free_ports(1);
    let server = start_logging(engine, &ports, &path, &["--access-log-buffer", "4096"]);
    // About 60 bytes a line: a few thousand connections fill the disk.
    let stop = Arc::new(AtomicBool::new(false));
    let workers = churn(&ports, 4, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let said = loop {
        if let Some(l) = server.stderr_line("write failed", Duration::from_millis(200)) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "{engine:?}: the full disk was never said"
        );
    };
    assert!(
        said.contains("No space left on device"),
        "{engine:?}: {said}"
    );
    // Serving goes on after it, and the writes that go on failing are not said again.
    let after = server.load(&["--conns", "20", "--requests", "5"]);
    assert_eq!(after.0, 0, "{engine:?}: {}", after.1);
    thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let done: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(
        server
            .stderr_line("write failed", Duration::from_millis(300))
            .is_none(),
        "{engine:?}: the failure is said once however many writes fail"
    );
    let stats = server.stop();
    assert!(u(&stats, "totals.log_errors") >= 2, "{engine:?}: {stats}");
    assert!(done > 1000, "{engine:?}: {done} connections");
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(a_full_disk_is_said_once_and_serving_goes_on);

/// HTTP: a line per request answered, pipelined too, each field as it should be; the peer
/// over IPv4 and IPv6.
fn http_logs_a_line_per_request(t: Target) {
    let dir = temp_dir(&format!("http-{t}").replace(' ', "-"));
    let path = dir.join("access.log");
    let ports = free_ports(2);
    let server = start_logging(t, &ports, &path, &["--proto", "http"]);
    let (code, r) = server.load(&[
        "--proto",
        "http",
        "--conns",
        "20",
        "--requests",
        "40",
        "--pipeline",
        "4",
    ]);
    assert_eq!(code, 0, "{t}: {r}");
    let stats = server.stop();
    let got = lines(&path);
    assert_eq!(got.len() as u64, u(&r, "requests"), "{t}: {stats}");
    assert_eq!(u(&stats, "totals.requests"), got.len() as u64, "{stats}");
    let peer = t.host().to_string();
    for line in &got {
        let (addr, rest) = line
            .split_once(" - - [")
            .unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(addr, peer, "{line:?}");
        let (_, rest) = rest.split_once("] ").unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(
            rest.rsplit_once(' ').map(|(head, _)| head),
            Some("\"GET /plaintext HTTP/1.1\" 200 13 \"-\" \"-\""),
            "{t}: {line:?}"
        );
        let took = rest.rsplit_once(' ').unwrap().1;
        assert!(
            took.len() >= 5 && took.as_bytes()[took.len() - 4] == b'.',
            "{line:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(ipv4_and_ipv6: http_logs_a_line_per_request);

/// Our HTTP lines against nginx's own `combined` (plus `$request_time`) for the same
/// requests, byte for byte but for the time and `$request_time`: the escaping of `"`, `\`
/// and bytes outside ASCII, an absent Referer, HEAD's empty body.
fn http_lines_match_nginx(engine: Engine) {
    if !common::installed("nginx -v", "nginx", "nginx-light") {
        return;
    }
    let dir = temp_dir(&format!("nginx-{engine:?}"));
    let (ours, theirs) = (dir.join("ours.log"), dir.join("nginx.log"));
    let ours_port = free_ports(1);
    let server = start_logging(engine, &ours_port, &ours, &["--proto", "http"]);
    let ours_port: u16 = ours_port.parse().unwrap();
    let nginx_port: u16 = free_ports(1).parse().unwrap();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
             http {{\n\
             log_format rt '$remote_addr - $remote_user [$time_local] \"$request\" $status \
             $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_time';\n\
             access_log {theirs} rt;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{nginx_port}; server_tokens off;\n\
             location / {{ default_type text/plain; return 200 \"Hello, World!\"; }} }}\n}}\n",
            theirs = theirs.display(),
        ),
    )
    .unwrap();
    let mut nginx = std::process::Command::new("nginx")
        .args(["-c", conf.to_str().unwrap(), "-p", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let requests: [&[u8]; 3] = [
        b"GET /plaintext?q=\"a\\b\" HTTP/1.1\r\nHost: x\r\nReferer: http://r/?\"\r\n\
          User-Agent: t\xc3\xa9st \"q\" \\ x\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    for port in [ours_port, nginx_port] {
        for req in requests {
            let mut s = loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("connect to {port}: {e}"),
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req).unwrap();
            // One answer each: wait for its head, then close.
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{port}: EOF before an answer");
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    server.stop();
    // nginx writes each line at once (no buffer); stop it by PID.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lines(&theirs).len() < requests.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = nginx.kill();
    let _ = nginx.wait();
    // The time and $request_time differ; all else must not.
    let mask = |l: &String| {
        let (head, rest) = l.split_once(" [").unwrap();
        let (_, rest) = rest.split_once("] ").unwrap();
        format!("{head} [T] {}", rest.rsplit_once(' ').unwrap().0)
    };
    // Each shard writes its own lines: across shards the order is the writes'.
    let sorted = |p: &Path| {
        let mut v: Vec<String> = lines(p).iter().map(mask).collect();
        v.sort();
        v
    };
    let (a, b) = (sorted(&ours), sorted(&theirs));
    assert_eq!(a.len(), requests.len(), "{engine:?}: {a:?}");
    assert_eq!(a, b, "{engine:?}: ours, then nginx's");
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(http_lines_match_nginx);

/// A disk that stalls (scripts/slow-disk.sh: every write held 700 ms for 1.5 s) under a
/// small `--access-log-buffer`: no line is lost in either engine; the Proactor, whose buffer
/// fills, stops reading until its write completes (counted as stall time) and never blocks
/// its thread; the Reactor's write(2) waits for the disk.
fn a_stalling_disk_loses_no_line(engine: Engine) {
    let fuse = std::path::Path::new("/dev/fuse").exists() && is_root();
    if !fuse {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with /dev/fuse"
        );
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = temp_dir(&format!("stall-{engine:?}"));
    let mnt = dir.join("slow");
    let slow = |args: &[&str]| {
        let st = std::process::Command::new("scripts/slow-disk.sh")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "slow-disk.sh {args:?}: {st}");
    };
    let m = mnt.to_str().unwrap();
    slow(&["up", m, "--off", "--stall-ms", "700"]);
    let path = mnt.join("access.log");
    let ports = free_ports(1);
    let server = start_logging(
        engine,
        &ports,
        &path,
        &["--proto", "http", "--access-log-buffer", "2048"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = http_clients(&ports, 4, stop.clone());
    thread::sleep(Duration::from_millis(500));
    slow(&["stall", m, "on"]);
    thread::sleep(Duration::from_millis(1500));
    slow(&["stall", m, "off"]);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let answered: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let stats = server.stop();
    let got = lines(&path);
    slow(&["down", m]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got.len() as u64, answered, "{engine:?}: {stats}");
    assert_eq!(u(&stats, "totals.log_errors"), 0, "{engine:?}: {stats}");
    if let Engine::Uring = engine {
        assert!(
            u(&stats, "totals.log_stall_us") >= 500_000,
            "the full buffer held the reads: {stats}"
        );
    }
}

common::per_engine!(a_stalling_disk_loses_no_line);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

/// `--access-log-fsync S`: the file is fdatasynced after writes, at most every S seconds, and
/// once more at the end.
fn fsync_at_most_every_interval(engine: Engine) {
    let dir = temp_dir(&format!("fsync-{engine:?}"));
    let path = dir.join("access.log");
    let ports = free_ports(1);
    let server = start_logging(
        engine,
        &ports,
        &path,
        &[
            "--proto",
            "http",
            "--access-log-fsync",
            "0.5",
            "--access-log-buffer",
            "4096",
        ],
    );
    let t = Instant::now();
    let (code, r) = server.load(&[
        "--proto",
        "http",
        "--conns",
        "10",
        "--rate",
        "2000",
        "--duration",
        "2",
    ]);
    let took = t.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{engine:?}: {r}");
    let stats = server.stop();
    let syncs = u(&stats, "totals.log_syncs");
    let shards = u(&stats, "shards");
    // Each shard: one every half second while it writes, and one at the end.
    let most = shards * ((took / 0.5).ceil() as u64 + 2);
    assert!(
        (2..=most).contains(&syncs),
        "{engine:?}: {syncs} syncs in {took:.1} s: {stats}"
    );
    assert_eq!(u(&stats, "totals.log_errors"), 0, "{stats}");
    assert_eq!(
        lines(&path).len() as u64,
        u(&stats, "totals.requests"),
        "{stats}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

common::per_engine!(fsync_at_most_every_interval);
