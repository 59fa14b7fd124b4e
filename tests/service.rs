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
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is not installed: .ci/run installs it (apt-get install systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
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
