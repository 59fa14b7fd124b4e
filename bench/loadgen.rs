//! Is the load generator ever the bottleneck? `cargo bench --bench loadgen`
//!
//! A one-core `uring-server` (pinned to core 0) is driven from one core (core 1) by
//! `uring-load` and, alternately in the same run, by a plain edge-triggered epoll closed-loop
//! echo client (below), at each connection count, 64 B echo, depth 1. Reported per client:
//! median throughput with its spread, and the server's CPU use (100 % = one core saturated).
//! Writes bench/results/loadgen-<date>-<kernel>.md and .json. Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use c1m::sys;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    override_usage = "cargo bench --bench loadgen [-- OPTIONS]",
    about = "uring-load vs a plain epoll client, same one-core server"
)]
struct Opts {
    /// Connection counts, each measured in turn
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "50,500"
    )]
    conns: Vec<usize>,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    output: common::Output,
}

/// One measured run: requests/s, server CPU %, client CPU seconds per 1,000 requests.
struct Run {
    rps: f64,
    server_cpu_pct: f64,
}

fn uring_load(port: u16, conns: usize, o: &common::Runs) -> (f64, f64) {
    let json = std::env::temp_dir().join("c1m-bench-loadgen.json");
    let st = Command::new("taskset")
        .args(["-c", "1", env!("CARGO_BIN_EXE_uring-load")])
        .args([
            "--ports",
            &port.to_string(),
            "--conns",
            &conns.to_string(),
            "--cores",
            "1",
        ])
        .args([
            "--duration",
            &o.duration.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .args(["--quiet", "--json"])
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run uring-load");
    assert!(st.success(), "uring-load failed");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (
        r["throughput_rps"].as_f64().unwrap(),
        r["duration_s"].as_f64().unwrap(),
    )
}

/// The other client: edge-triggered epoll, one thread pinned to core 1, 64 B requests, depth 1,
/// each echo checked. Returns requests/s over the measured window.
fn epoll_client(port: u16, conns: usize, o: &common::Runs) -> f64 {
    let handle = std::thread::spawn({
        let (warmup, duration) = (o.warmup, o.duration);
        move || {
            sys::pin_current_thread(1).expect("pin to core 1");
            let ep = sys::epoll_create().unwrap();
            let msg: Vec<u8> = (0..64u8).collect();
            let socks: Vec<TcpStream> = (0..conns)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                .collect();
            let mut got = vec![0usize; conns];
            for (i, s) in socks.iter().enumerate() {
                s.set_nonblocking(true).unwrap();
                s.set_nodelay(true).unwrap();
                let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
                sys::epoll_add(ep.as_raw_fd(), s.as_raw_fd(), ev, i as u64).unwrap();
                sys::write(s.as_raw_fd(), &msg).unwrap();
            }
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
            let mut buf = [0u8; 4096];
            let start = Instant::now();
            let from = start + Duration::from_secs_f64(warmup);
            let until = from + Duration::from_secs_f64(duration);
            let mut counted = 0u64;
            while Instant::now() < until {
                let n = sys::epoll_wait(ep.as_raw_fd(), &mut events, 100).unwrap();
                for ev in &events[..n] {
                    let i = ev.u64 as usize;
                    let fd = socks[i].as_raw_fd();
                    loop {
                        match sys::read(fd, &mut buf) {
                            Ok(0) => panic!("server closed"),
                            Ok(k) => {
                                assert!(buf[..k].iter().zip(got[i]..).all(|(b, j)| *b == j as u8));
                                got[i] += k;
                                if got[i] == 64 {
                                    got[i] = 0;
                                    if Instant::now() >= from {
                                        counted += 1;
                                    }
                                    sys::write(fd, &msg).unwrap();
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                }
            }
            counted as f64 / duration
        }
    });
    handle.join().unwrap()
}

fn measure(server: &common::Proc, f: impl FnOnce() -> f64) -> Run {
    let (u0, s0) = server.cpu();
    let t0 = Instant::now();
    let rps = f();
    let wall = t0.elapsed().as_secs_f64();
    let (u1, s1) = server.cpu();
    // The run includes connect and warm-up; CPU over the whole of it, as a share of one core.
    Run {
        rps,
        server_cpu_pct: (u1 - u0 + s1 - s0) / wall * 100.0,
    }
}

fn main() {
    let (o, _) = common::parse::<Opts>(|c| c);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = common::Proc::server_on(
        "0",
        env!("CARGO_BIN_EXE_uring-server"),
        &[
            "--host",
            "127.0.0.1",
            "--ports",
            &port.to_string(),
            "--cores",
            "1",
            "--max-conns",
            "5000",
        ],
    );
    let mut rows = Vec::new();
    for &conns in &o.conns {
        let (mut ul, mut ep) = (Vec::new(), Vec::new());
        for rep in 0..o.runs.reps {
            eprintln!(
                "loadgen bench: {conns} conns, rep {}/{}",
                rep + 1,
                o.runs.reps
            );
            ul.push(measure(&server, || uring_load(port, conns, &o.runs).0));
            ep.push(measure(&server, || epoll_client(port, conns, &o.runs)));
        }
        for (name, runs) in [("uring-load", ul), ("epoll client", ep)] {
            let mut rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
            let mut cpu: Vec<f64> = runs.iter().map(|r| r.server_cpu_pct).collect();
            let (lo, hi) = (
                rps.iter().cloned().fold(f64::MAX, f64::min),
                rps.iter().cloned().fold(0.0, f64::max),
            );
            rows.push(serde_json::json!({
                "client": name, "conns": conns,
                "rps_median": common::median(&mut rps), "rps_min": lo, "rps_max": hi,
                "server_cpu_pct_median": common::median(&mut cpu),
            }));
        }
    }
    server.stop();

    let cmd = format!(
        "cargo bench --bench loadgen -- --duration {} --warmup {} --reps {} --conns {}",
        o.runs.duration,
        o.runs.warmup,
        o.runs.reps,
        o.conns
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut md = format!(
        "# Load generator vs a plain epoll client, same one-core server\n\n\
         {} · kernel {} · commit {} · {}\n\n`{cmd}`\n\n\
         Server: `uring-server --cores 1` pinned to core 0. Clients pinned to core 1, one thread, \
         64 B echo, depth 1, alternating in the same run; median of {} runs (min-max). Server CPU \
         is its user+sys time over each whole run (connect and warm-up included) per wall second.\n\n\
         | client | conns | req/s (median) | min-max | server CPU |\n|---|---|---|---|---|\n",
        common::today(),
        common::kernel(),
        common::commit(),
        common::machine(),
        o.runs.reps
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {:.0} | {:.0}-{:.0} | {:.0} % |\n",
            r["client"].as_str().unwrap(),
            r["conns"],
            r["rps_median"].as_f64().unwrap(),
            r["rps_min"].as_f64().unwrap(),
            r["rps_max"].as_f64().unwrap(),
            r["server_cpu_pct_median"].as_f64().unwrap()
        );
    }
    println!("{md}");
    let out = &o.output.out;
    let base = format!("{out}/loadgen-{}-{}", common::today(), common::kernel());
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(format!("{base}.md"), &md).unwrap();
    let json = serde_json::json!({
        "bench": "loadgen", "date": common::today(), "kernel": common::kernel(),
        "commit": common::commit(), "machine": common::machine(), "command": cmd, "rows": rows,
    });
    std::fs::write(
        format!("{base}.json"),
        serde_json::to_string_pretty(&json).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("wrote {base}.md and .json");
}
