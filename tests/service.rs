//! Running as a service: systemd's notification protocol (READY=1, STATUS=, STOPPING=1 to
//! $NOTIFY_SOCKET, from the server or the Reactor's master only) and the unit files in
//! contrib/systemd, checked with `systemd-analyze verify`. Real sockets, real binaries.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Engine, Server, free_ports};

/// Every datagram that arrives on `sock` until `until` says true of one, or `limit` passes.
fn receive_until(
    sock: &UnixDatagram,
    limit: Duration,
    until: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = until(&msg);
        got.push(msg);
        if done {
            break;
        }
    }
    got
}

/// `workers`: an epoll-server whose fd limit makes it a master of 2 worker processes.
fn the_server_tells_systemd_when_it_is_ready_how_it_does_and_when_it_stops(
    engine: Engine,
    workers: bool,
) {
    let path = std::env::temp_dir().join(format!(
        "c1m-notify-{}-{engine:?}-{workers}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    let ports = free_ports(2);
    let (extra, nofile): (&[&str], _) = if workers {
        (&["--max-conns", "300"], Some(400))
    } else {
        (&[], None)
    };
    let server = Server::start_with_env(
        engine,
        &ports,
        extra,
        nofile,
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    assert_eq!(server.children().len(), if workers { 2 } else { 0 });
    let got = receive_until(&sock, Duration::from_secs(5), |m| m.starts_with("READY=1"));
    let ready = got.last().expect("a READY=1 datagram");
    let mut lines = ready.lines();
    assert_eq!(lines.next(), Some("READY=1"), "{got:?}");
    assert_eq!(
        lines.next(),
        Some(format!("MAINPID={}", server.pid()).as_str())
    );
    let status = lines.next().unwrap();
    assert!(
        status.starts_with("STATUS=listening on 127.0.0.1:"),
        "{status}"
    );
    // The stats line, once a second.
    let got = receive_until(&sock, Duration::from_secs(3), |m| {
        m.starts_with("STATUS=t=")
    });
    let status = got.last().expect("a STATUS datagram");
    assert!(
        status.starts_with("STATUS=t=") && status.contains(" conns=0 "),
        "{got:?}"
    );
    server.stop();
    let got = receive_until(&sock, Duration::from_secs(1), |m| m == "STOPPING=1");
    assert_eq!(
        got.last().map(String::as_str),
        Some("STOPPING=1"),
        "{got:?}"
    );
    // Only one process spoke: no second READY from a worker.
    let rest = receive_until(&sock, Duration::from_millis(300), |_| false);
    assert!(rest.iter().all(|m| !m.contains("READY")), "{rest:?}");
    let _ = std::fs::remove_file(&path);
}

fn notifies(engine: Engine) {
    the_server_tells_systemd_when_it_is_ready_how_it_does_and_when_it_stops(engine, false);
}

common::per_engine!(notifies);

#[test]
fn an_epoll_master_notifies_for_its_workers() {
    the_server_tells_systemd_when_it_is_ready_how_it_does_and_when_it_stops(Engine::Epoll, true);
}

/// An abstract-namespace NOTIFY_SOCKET ("@name", as systemd may give) works too.
#[test]
fn an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("c1m-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let at = format!("@{name}");
    let server = Server::start_with_env(
        Engine::Uring,
        &free_ports(1),
        &[],
        None,
        &[("NOTIFY_SOCKET", at.as_ref())],
    );
    let got = receive_until(&sock, Duration::from_secs(5), |m| m.starts_with("READY=1"));
    assert!(
        got.last().is_some_and(|m| m.starts_with("READY=1")),
        "{got:?}"
    );
    server.stop();
}

/// The unit files pass `systemd-analyze verify` (with ExecStart pointed at the built
/// binaries): no error and not one warning.
#[test]
fn the_unit_files_verify() {
    if !common::installed("command -v systemd-analyze", "systemd-analyze", "systemd") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("c1m-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for engine in [Engine::Uring, Engine::Epoll] {
        let bin = std::path::Path::new(engine.binary());
        let name = bin.file_name().unwrap().to_str().unwrap();
        let unit = std::fs::read_to_string(format!(
            "{}/contrib/systemd/{name}.service",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(
            unit.contains(&format!("ExecStart=/usr/local/bin/{name} ")),
            "{unit}"
        );
        assert!(unit.contains("Type=notify") && unit.contains("LimitNOFILE=1048576"));
        let here = dir.join(format!("{name}.service"));
        let dir_of_bin = bin.parent().unwrap().to_str().unwrap();
        std::fs::write(&here, unit.replace("/usr/local/bin", dir_of_bin)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&here)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(!err.contains(name), "{name}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scrapes `url` and parses it with the Prometheus client's own text parser (Python's
/// prometheus_client); returns the families as JSON: name -> {type, help, samples}.
fn scrape(url: &str) -> serde_json::Value {
    const PARSE: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
print(json.dumps({f.name: {"type": f.type, "help": f.documentation,
                           "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                  for f in text_string_to_metric_families(text)}))
"#;
    // The distribution's python3, where apt installs python3-prometheus-client.
    let out = Command::new("/usr/bin/python3")
        .args(["-c", PARSE, url])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "scraping {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether the Prometheus client's parser is there (see `common::installed`).
fn have_prometheus_parser() -> bool {
    common::installed(
        "/usr/bin/python3 -c 'import prometheus_client'",
        "prometheus_client",
        "python3-prometheus-client",
    )
}

/// The sum over shards of counter family `name`'s samples.
fn total(families: &serde_json::Value, name: &str) -> f64 {
    families[name]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {name}: {families}"))
        .iter()
        .map(|s| s[2].as_f64().unwrap())
        .sum()
}

/// `--metrics`: every counter, per shard, with HELP and TYPE, as the real parser reads it;
/// the connections gauge follows opens and closes, the owed-output gauge a peer that does
/// not read. With `workers`, the epoll master serves
/// the sum of its worker processes (their counters reach it once a second).
fn metrics_count_what_happened(engine: Engine, workers: bool) {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    if !have_prometheus_parser() {
        return;
    }
    let ports = free_ports(2);
    let mport = free_ports(1);
    let maddr = format!("127.0.0.1:{mport}");
    let (mut extra, nofile) = if workers {
        (vec!["--max-conns", "300"], Some(400))
    } else {
        (vec![], None)
    };
    extra.extend(["--metrics", maddr.as_str()]);
    let server = Server::start_with_env(engine, &ports, &extra, nofile, &[]);
    let port: u16 = ports.split(',').next().unwrap().parse().unwrap();
    let mut open: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for s in &mut open {
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
    }
    drop(open.pop());
    let url = format!("http://{maddr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(5);
    let families = loop {
        let f = scrape(&url);
        let settled = total(&f, "c1m_accepted") == 3.0
            && total(&f, "c1m_closed") == 1.0
            && total(&f, "c1m_connections") == 2.0;
        if settled || Instant::now() > deadline {
            break f;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(total(&families, "c1m_accepted"), 3.0, "{families}");
    assert_eq!(total(&families, "c1m_closed"), 1.0);
    assert_eq!(total(&families, "c1m_connections"), 2.0);
    assert_eq!(total(&families, "c1m_bytes_in"), 12.0);
    assert_eq!(total(&families, "c1m_bytes_out"), 12.0);
    let accepted = &families["c1m_accepted"];
    assert_eq!(accepted["type"], "counter");
    assert_eq!(accepted["help"], "Connections accepted.");
    assert_eq!(families["c1m_connections"]["type"], "gauge");
    let samples = accepted["samples"].as_array().unwrap();
    assert_eq!(samples[0][0], "c1m_accepted_total");
    let name = match engine {
        Engine::Uring => "uring",
        Engine::Epoll => "epoll",
    };
    assert!(
        samples.iter().all(|s| s[1]["engine"] == name),
        "{samples:?}"
    );
    let shards = if workers {
        2
    } else {
        2.min(c1m::sys::allowed_cpus().unwrap().len())
    };
    assert_eq!(samples.len(), shards, "one sample per shard: {samples:?}");

    // Anything but GET /metrics is refused.
    let mut s = TcpStream::connect(&maddr).unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");

    // Pending work: a peer that sends and reads none of its echo leaves output owed (the
    // gauge 1) until it goes (0). It sends until its writes block for 2 s: more than the
    // server's socket buffer takes (megabytes on loopback), which counts as taken.
    let deaf = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        // A small window, so that the echo cannot all sit in this socket's buffer.
        s.set_recv_buffer_size(4096).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        s.connect(&addr.into()).unwrap();
        TcpStream::from(s)
    };
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = (&deaf).write_all(&vec![7u8; 64 << 20]);
    let owed_is = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = scrape(&url);
            if total(&f, "c1m_output_owed") == want || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let f = owed_is(1.0);
    assert_eq!(total(&f, "c1m_output_owed"), 1.0, "{engine:?}: {f}");
    assert_eq!(f["c1m_output_owed"]["type"], "gauge");
    drop(deaf);
    let f = owed_is(0.0);
    assert_eq!(total(&f, "c1m_output_owed"), 0.0, "{engine:?}: {f}");
    drop(open);
    server.stop();
}

fn metrics(engine: Engine) {
    metrics_count_what_happened(engine, false);
}

common::per_engine!(metrics);

#[test]
fn an_epoll_master_serves_its_workers_metrics() {
    metrics_count_what_happened(Engine::Epoll, true);
}

/// The real, effective, saved and filesystem uids of process `pid`.
fn uids(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line["Uid:".len()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `--user nobody`: set up as root (listeners, PID file), then every thread of the server,
/// and of an epoll master's workers, runs as nobody; it serves, and removes its PID file.
fn the_server_drops_root_for_its_user(engine: Engine, workers: bool) {
    use std::io::{Read, Write};
    if c1m::sys::user::euid() != 0 {
        eprintln!("SKIPPED: --user needs the tests to run as root");
        return;
    }
    let nobody = c1m::sys::user::user("nobody")
        .unwrap()
        .expect("a user nobody");
    let pid_path = std::env::temp_dir().join(format!(
        "c1m-user-{}-{engine:?}-{workers}.pid",
        std::process::id()
    ));
    let pid_s = pid_path.to_str().unwrap();
    let ports = free_ports(2);
    let mut extra = vec!["--user", "nobody", "--pid-file", pid_s];
    let nofile = workers.then_some(400);
    if workers {
        extra.extend(["--max-conns", "300"]);
    }
    let server = Server::start_with_env(engine, &ports, &extra, nofile, &[]);
    let want = [nobody.uid; 4].map(|u| u.to_string()).join(" ");
    let mut pids = vec![server.pid()];
    pids.extend(server.children());
    assert_eq!(pids.len(), if workers { 3 } else { 1 });
    for pid in &pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
            let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
            assert_eq!(uids(tid), want, "{engine:?}: thread {tid} of {pid}");
        }
    }
    let port: u16 = ports.split(',').next().unwrap().parse().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    drop(s);
    server.stop();
    assert!(
        !pid_path.exists(),
        "the PID file is removed by the user it was given to"
    );
}

fn drops_root(engine: Engine) {
    the_server_drops_root_for_its_user(engine, false);
}

common::per_engine!(drops_root);

#[test]
fn an_epoll_master_and_its_workers_drop_root() {
    the_server_drops_root_for_its_user(Engine::Epoll, true);
}

#[test]
fn a_user_that_cannot_be_is_a_usage_error() {
    for engine in [Engine::Uring, Engine::Epoll] {
        for (user, says) in [
            ("c1m-no-such-user", "there is no user \"c1m-no-such-user\""),
            (
                "nobody:c1m-no-such-group",
                "there is no group \"c1m-no-such-group\"",
            ),
            ("root", "would keep the server running as root"),
        ] {
            let out = Command::new(engine.binary())
                .args([
                    "--host",
                    "127.0.0.1",
                    "--ports",
                    &free_ports(1),
                    "--user",
                    user,
                ])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{engine:?} {user}: {err}");
            assert!(err.contains(says), "{engine:?} {user}: {err}");
        }
    }
}

/// SIGHUP reads the `--config` file again: the timeouts (and the cap) apply at once, a key
/// that needs a restart is said and kept, a file that does not check changes nothing.
fn sighup_applies_what_can_change_and_says_the_rest(engine: Engine) {
    use std::io::Read;
    let path = std::env::temp_dir().join(format!("c1m-hup-{}-{engine:?}.toml", std::process::id()));
    let p = path.to_str().unwrap().to_string();
    std::fs::write(&path, "idle-timeout = 100\nmax-conns = 1000\n").unwrap();
    let ports = free_ports(1);
    let port: u16 = ports.parse().unwrap();
    let server = Server::start(engine, &ports, &["--config", &p]);
    std::fs::write(
        &path,
        "idle-timeout = 1\nmax-conns = 900\nproto = \"http\"\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let applied = server
        .stderr_line("SIGHUP: applied", Duration::from_secs(5))
        .expect("the reload says what it applied");
    assert!(
        applied.contains("idle-timeout = 1 (was 100), max-conns = 900 (was 1000)"),
        "{applied}"
    );
    let kept = server
        .stderr_line("needs a restart", Duration::from_secs(5))
        .expect("and what it kept");
    assert!(kept.contains("SIGHUP: proto changed too"), "{kept}");
    // A connection opened now is cut after the new idle timeout, not 100 s.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by the server");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    std::fs::write(&path, "idle-timeout = -5\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server
        .stderr_line("nothing changed", Duration::from_secs(5))
        .expect("a bad file changes nothing");
    assert!(
        line.contains("--idle-timeout must be a number of seconds"),
        "{line}"
    );
    let stats = server.stop();
    assert_eq!(common::u(&stats, "totals.idle_timeouts"), 1, "{stats}");
    let _ = std::fs::remove_file(&path);
}

fn sighup(engine: Engine) {
    sighup_applies_what_can_change_and_says_the_rest(engine);
}

common::per_engine!(sighup);
